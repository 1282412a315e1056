"""History guidance (docs/method.md §8, not in the paper): a short-history branch, which sees only the last
`history_frames` latent frames, and logits pushed away from it by `history_guidance_scale`."""

import pytest
import torch

from videoar_hf import VideoARConfig
from videoar_hf.testing_utils import tiny_pipeline

PROMPT = "a red circle moving left"


@pytest.fixture
def pipe():
    pipe = tiny_pipeline()
    pipe.transformer.config.max_latent_frames = 3  # as if trained on 9-frame clips: a 33-frame video has windows
    return pipe


def watch_batches(pipe) -> list[int]:
    batches = []
    pipe.transformer.register_forward_hook(lambda module, args, output: batches.append(output.logits.shape[0]))
    return batches


def generate(pipe, **kwargs) -> torch.Tensor:
    return pipe(PROMPT, num_frames=33, output_type="pt", generator=torch.Generator().manual_seed(2), **kwargs).frames


def test_it_is_off_by_default_and_a_scale_of_one_skips_the_extra_branch(pipe):
    assert pipe.transformer.config.history_guidance_scale == 1.0
    batches = watch_batches(pipe)
    default = generate(pipe, guidance_frames=1)
    off = batches.copy()
    batches.clear()
    torch.testing.assert_close(generate(pipe, guidance_frames=1, history_guidance_scale=[1.0, 1.0, 1.0]), default)
    assert batches == off == [2] * 3 + [1] * 6 + ([2] + [1] * 6) * 3


def test_the_short_history_branch_rides_in_the_batch_beside_guidance(pipe):
    batches = watch_batches(pipe)
    frames = generate(pipe, guidance_frames=1, history_guidance_scale=2.0)
    # frame 0: conditional, unconditional and short history; then the unconditional rows go; each later window
    # prefills its re-encoded frame with all three branches
    assert batches == [3] * 3 + [2] * 6 + ([3] + [2] * 6) * 3
    assert not torch.allclose(frames, generate(pipe, guidance_frames=1))


def test_history_guidance_start_leaves_earlier_frames_and_windows_alone(pipe):
    default = generate(pipe, guidance_frames=1)
    batches = watch_batches(pipe)
    # from the first re-encoded window on: the first window runs without the branch and draws the default's frames
    later = generate(pipe, guidance_frames=1, history_guidance_scale=2.0, history_guidance_start=3)
    assert batches == [2] * 3 + [1] * 6 + ([3] + [2] * 6) * 3
    torch.testing.assert_close(later[:, :9], default[:, :9])  # latent frames 0-2
    assert not torch.allclose(later[:, 9:], default[:, 9:])
    # from inside a window: frame 3 rides beside the branch unguided, frame 4 is guided
    pipe.transformer.config.history_guidance_start = 4
    inside = generate(pipe, guidance_frames=1, history_guidance_scale=2.0)
    torch.testing.assert_close(inside[:, :13], default[:, :13])  # latent frames 0-3
    assert not torch.allclose(inside[:, 13:17], default[:, 13:17])


def test_the_short_branch_sees_only_history_frames_past_frames(pipe):
    transformer = pipe.transformer
    scale_inputs = [torch.randn(2, 4, h, h, 8) for h in (1, 2, 4)]

    def logits(sample_windows=None, frame_mask_window=None):
        transformer.config.frame_mask_window = frame_mask_window
        cache = transformer.init_cache(4, 4, sample_windows=sample_windows)
        text = torch.randn(2, 5, transformer.config.text_hidden_size)
        out, first = [], True
        for frame in range(4):
            for scale in range(3):
                block = None if first else scale_inputs[scale][:, frame].flatten(1, 2)
                kwargs = {"text_hidden_states": text} if first else {}
                out.append(transformer(block, cache=cache, **kwargs).logits)
                first = False
        return torch.cat(out, dim=1)

    with torch.no_grad():
        torch.manual_seed(1)
        full = logits()
        torch.manual_seed(1)
        mixed = logits(sample_windows=torch.tensor([10, 1]))
        torch.manual_seed(1)
        window_one = logits(frame_mask_window=1)
    torch.testing.assert_close(mixed[0], full[0])  # the long branch is untouched
    torch.testing.assert_close(mixed[1], window_one[1])  # the short one is a model with a window of one frame
    assert not torch.allclose(mixed[1], full[1])


def test_sampled_logits_move_away_from_the_short_history(pipe):
    branches, sampled = [], []
    pipe.transformer.register_forward_hook(lambda module, args, output: branches.append(output.logits.float()))

    def callback(pipe, step, timestep, kwargs):
        sampled.append(kwargs["logits"])
        return {}

    pipe(PROMPT, num_frames=9, guidance_scale=1.0, history_guidance_scale=[3.0, 1.0, 2.0], history_frames=0,
         callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["logits"])  # fmt: skip
    assert len(branches) == len(sampled) == 9
    for step, (both, used) in enumerate(zip(branches, sampled)):
        cond, short = both.chunk(2)
        scale = [3.0, 1.0, 2.0][step % 3]
        torch.testing.assert_close(used, cond + (scale - 1) * (cond - short))
    assert torch.allclose(*branches[0].chunk(2)), "frame 0 has no past: both branches agree"
    assert not torch.allclose(*branches[-1].chunk(2))


def test_the_models_config_gives_the_default_and_a_call_overrides_it(pipe):
    pipe.transformer.config.history_guidance_scale = 2.0
    pipe.transformer.config.history_frames = 0
    batches = watch_batches(pipe)
    pipe(PROMPT, num_frames=9, guidance_scale=1.0)
    assert batches == [2] * 9
    batches.clear()
    pipe(PROMPT, num_frames=9, guidance_scale=1.0, history_guidance_scale=1)
    assert batches == [1] * 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"history_guidance_scale": "2"}, "history_guidance_scale"),
        ({"history_guidance_scale": float("nan")}, "history_guidance_scale"),
        ({"history_guidance_scale": []}, "history_guidance_scale"),
        ({"history_guidance_scale": [2.0, 2.0]}, "one per scale"),
        ({"history_frames": -1}, "history_frames"),
        ({"history_frames": 1.5}, "history_frames"),
        ({"history_guidance_start": -2}, "history_guidance_start"),
    ],
)
def test_bad_arguments_are_named(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(PROMPT, num_frames=9, **kwargs)


@pytest.mark.parametrize("field, value", [("history_guidance_scale", float("inf")), ("history_guidance_scale", True),
                                          ("history_frames", -1), ("history_frames", 2.0),
                                          ("history_guidance_start", -1)])  # fmt: skip
def test_bad_config_fields_are_named(field, value):
    with pytest.raises(Exception, match=field):  # huggingface_hub's strict-dataclass errors, or ours
        VideoARConfig.from_preset("tiny", **{field: value})


def test_the_fields_survive_a_save(tmp_path, pipe):
    pipe.transformer.config.history_guidance_scale = [2.0, 2.0, 1.0]
    pipe.transformer.config.history_frames = 2
    pipe.transformer.config.history_guidance_start = 5
    pipe.save_pretrained(tmp_path)
    config = VideoARConfig.from_pretrained(tmp_path / "transformer")
    assert (config.history_guidance_scale, config.history_frames, config.history_guidance_start) == ([2.0, 2.0, 1.0], 2, 5)
