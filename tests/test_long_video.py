"""Long video by frame re-encoding (docs/method.md §8) and prompt switching: a model trained on `max_latent_frames`
latent frames generates any length in windows, each starting on the re-encoded end of the video so far."""

import numpy as np
import pytest
import torch

from videoar_hf import VideoARConfig
from videoar_hf.testing_utils import tiny_pipeline

PROMPT = "a red circle moving left"


@pytest.fixture
def pipe():
    pipe = tiny_pipeline()
    pipe.transformer.config.max_latent_frames = 3  # as if trained on 9-frame clips
    return pipe


def watch_blocks(pipe) -> list[dict]:
    """Record, for every transformer call, the (frame, scale) block it runs and the cache's size before it."""
    seen = []

    def hook(module, args, kwargs):
        cache = kwargs["cache"]
        seen.append({"frame": cache.next_block[0], "cached": 0 if cache.is_empty else len(cache.token_blocks),
                     "text": kwargs.get("text_hidden_states")})  # fmt: skip

    pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_a_long_video_stays_inside_the_trained_positions_and_a_bounded_cache(pipe):
    seen = watch_blocks(pipe)
    frames = pipe(PROMPT, num_frames=33, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 33, 32, 32, 3)
    assert max(block["frame"] for block in seen) == 2, "temporal positions restart in each window"
    tokens_per_frame = 1 + 4 + 16
    assert max(block["cached"] for block in seen) < 3 * tokens_per_frame + 64, "the cache never outgrows a window"
    # 9 latent frames in windows of 3 that re-encode 1 frame: 3 x 3 passes, then three times the re-encoded frame in
    # one pass and 2 x 3 passes
    assert len(seen) == pipe.num_timesteps == 9 + 3 * (1 + 6)


def test_stream_yields_the_frames_of_call(pipe):
    generator = torch.Generator().manual_seed(1)
    frames = pipe(PROMPT, num_frames=25, generator=generator, output_type="pt").frames
    chunks = list(pipe.stream(PROMPT, num_frames=25, generator=torch.Generator().manual_seed(1), output_type="pt"))
    assert [c.shape[1] for c in chunks] == [1] + [4] * 6
    torch.testing.assert_close(torch.cat(chunks, dim=1), frames)


def record_encodes(pipe, monkeypatch) -> list[torch.Tensor]:
    """The videos the pipeline's tokenizer encodes from now on (the re-encoded tails of long videos)."""
    encoded = []
    original = pipe.video_tokenizer.encode

    def spy(video, *args, **kwargs):
        encoded.append(video.clone())
        return original(video, *args, **kwargs)

    monkeypatch.setattr(pipe.video_tokenizer, "encode", spy)
    return encoded


def test_the_next_window_starts_from_the_end_of_the_video(pipe, monkeypatch):
    encoded = record_encodes(pipe, monkeypatch)
    frames = pipe(PROMPT, num_frames=17, output_type="pt", context_frames=2, generator=torch.Generator().manual_seed(2)).frames
    # windows: latent frames 0-2, then 1-3 (1 and 2 re-encoded), then 2-4: each re-encodes 1 + 4 pixel frames
    assert [v.shape[2] for v in encoded] == [5, 5]
    first_tail = encoded[0][0].permute(1, 0, 2, 3).add(1).div(2)  # (T, 3, H, W) in [0, 1], as frames
    torch.testing.assert_close(first_tail.clamp(0, 1), frames[0, 4:9], atol=1e-5, rtol=0)


def test_a_prompt_switch_mid_video_continues_under_the_new_prompt(pipe):
    pipe.transformer.config.max_latent_frames = None  # switching alone starts a window
    seen = watch_blocks(pipe)
    frames = pipe(PROMPT, num_frames=17, next_prompts=[(9, "a blue square moving up")], guidance_scale=1.0).frames
    assert frames.shape == (1, 17, 32, 32, 3)
    new_text, _, _, _ = pipe.encode_prompt("a blue square moving up", do_classifier_free_guidance=False)
    firsts = [block for block in seen if block["cached"] == 0]
    assert len(firsts) == 2, "one window per prompt"
    torch.testing.assert_close(firsts[1]["text"], new_text)
    assert not torch.equal(firsts[0]["text"][:, : new_text.shape[1]], new_text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"next_prompts": [(8, "x")]}, "next_prompts"),
        ({"next_prompts": [(9, "x"), (5, "y")]}, "next_prompts"),
        ({"next_prompts": [(17, "x")]}, "next_prompts"),
        ({"next_prompts": "a blue square"}, "next_prompts"),
        ({"context_frames": 3}, "context_frames"),
        ({"context_frames": 0}, "context_frames"),
        ({"output_type": "latent", "num_frames": 33}, "latent"),
    ],
)
def test_bad_long_video_arguments_are_named(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(PROMPT, **{"num_frames": 17, **kwargs})


def test_short_videos_are_sampled_in_one_window_as_before(pipe):
    seen = watch_blocks(pipe)
    frames = pipe(PROMPT, num_frames=9, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    reference = pipe(PROMPT, num_frames=9, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3) and reference.shape[2] == 3
    assert sum(block["cached"] == 0 for block in seen) == 2, "one window per call"
    assert np.isfinite(frames).all()


def test_129_frames_from_a_model_trained_on_17_and_stream_stay_in_the_trained_range():
    pipe = tiny_pipeline()
    pipe.transformer.config.max_latent_frames = 5  # what train_videoar.py records for 17-frame clips
    seen = watch_blocks(pipe)
    assert pipe(PROMPT, num_frames=129).frames.shape == (1, 129, 32, 32, 3)
    assert sum(chunk.shape[1] for chunk in pipe.stream(PROMPT, num_frames=129)) == 129
    assert max(block["frame"] for block in seen) == 4


def test_prefilling_known_frames_in_one_pass_equals_running_them_block_by_block():
    pipe = tiny_pipeline()
    transformer, quantizer = pipe.transformer, pipe.video_tokenizer.quantizer
    text, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    latents = torch.randn(1, 8, 3, 4, 4)
    pyramid = quantizer.residual_quantize(latents, transformer.scale_sizes(4, 4))
    inputs = [x.flatten(2, 3) for x in pyramid.scale_inputs]  # (B, T, h*w, d) per scale

    def next_logits(prefill: bool):
        cache = transformer.init_cache(4, 4)
        with torch.no_grad():
            if prefill:  # frames 0 and 1 in one pass
                packed = torch.cat([inputs[k][:, t] for t in range(2) for k in range(3)], dim=1)
                transformer(packed, text, mask, cache=cache)
            else:
                for t in range(2):
                    for k in range(3):
                        first = t == 0 and k == 0
                        transformer(None if first else inputs[k][:, t], text if first else None,
                                    mask if first else None, cache=cache)  # fmt: skip
            return transformer(inputs[0][:, 2], cache=cache).logits

    torch.testing.assert_close(next_logits(prefill=True), next_logits(prefill=False), atol=1e-5, rtol=1e-5)


def test_the_models_config_gives_the_default_context_and_a_call_overrides_it(pipe, monkeypatch):
    pipe.transformer.config.max_latent_frames = 5
    pipe.transformer.config.context_frames = 3  # half the trained length would be 2
    encoded = record_encodes(pipe, monkeypatch)
    generator = torch.Generator().manual_seed(3)
    pipe(PROMPT, num_frames=25, output_type="pt", generator=generator)
    # 7 latent frames: frames 0-4, then 2-6 on the last 3 re-encoded (1 + 4 x 2 pixel frames)
    assert [video.shape[2] for video in encoded] == [9]
    encoded.clear()
    pipe(PROMPT, num_frames=25, output_type="pt", context_frames=1, generator=generator)
    assert [video.shape[2] for video in encoded] == [1]


@pytest.mark.parametrize(
    "fields",
    [{"context_frames": 0}, {"context_frames": True}, {"context_frames": 2.5},
     {"context_frames": 5, "max_latent_frames": 5}],
)
def test_a_bad_context_in_the_config_is_named(fields):
    with pytest.raises(Exception, match="context_frames"):  # huggingface_hub's strict-dataclass errors
        VideoARConfig.from_preset("tiny", **fields)


def watch_batches(pipe) -> list[int]:
    """The batch of every transformer call: 2 per video with classifier-free guidance, 1 without."""
    batches = []
    pipe.transformer.register_forward_hook(lambda module, args, output: batches.append(output.logits.shape[0]))
    return batches


def test_guidance_stops_after_guidance_frames_and_later_frames_skip_the_unconditional_pass(pipe):
    batches = watch_batches(pipe)
    frames = pipe(PROMPT, num_frames=33, guidance_scale=4.0, guidance_frames=2, output_type="pt",
                  generator=torch.Generator().manual_seed(4)).frames  # fmt: skip
    # windows of 3 latent frames re-encoding 1: frames 0 and 1 guided, then the unconditional half is dropped; each
    # later window prefills its re-encoded frame with both halves, then drops one
    assert batches == [2] * 6 + [1] * 3 + ([2] + [1] * 6) * 3
    table = torch.full((9, 3), 4.0)
    table[2:] = 1.0
    same = pipe(PROMPT, num_frames=33, guidance_scale=table, output_type="pt", generator=torch.Generator().manual_seed(4)).frames
    torch.testing.assert_close(frames, same, atol=1e-5, rtol=0)
    assert not torch.allclose(frames, pipe(PROMPT, num_frames=33, guidance_scale=4.0, output_type="pt",
                                           generator=torch.Generator().manual_seed(4)).frames)  # fmt: skip


def test_the_models_config_gives_the_default_guided_frames_and_a_call_overrides_it(pipe):
    pipe.transformer.config.guidance_frames = 3
    batches = watch_batches(pipe)
    pipe(PROMPT, num_frames=17)  # windows 0-2 and 2-4: the second samples frames 3 and 4, past the guided ones
    assert batches == [2] * 9 + [2] + [1] * 6
    batches.clear()
    pipe(PROMPT, num_frames=17, guidance_frames=4)
    assert batches == [2] * 9 + [2] + [2] * 3 + [1] * 3


def test_guidance_restarts_with_each_later_prompt(pipe):
    pipe.transformer.config.max_latent_frames = None  # switching alone starts a window
    batches = watch_batches(pipe)
    frames = pipe(PROMPT, num_frames=17, next_prompts=[(9, "a blue square moving up")], guidance_frames=1).frames
    assert frames.shape == (1, 17, 32, 32, 3)
    # frame 0 guided, frame 1 not; the second prompt's window (1-4, frame 1 re-encoded) guides its first frame, 2
    assert batches == [2] * 3 + [1] * 3 + [2] + [2] * 3 + [1] * 6


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "2"])
def test_a_bad_guidance_frames_is_named(pipe, value):
    with pytest.raises(ValueError, match="guidance_frames"):
        pipe(PROMPT, num_frames=17, guidance_frames=value)
    with pytest.raises(Exception, match="guidance_frames"):  # huggingface_hub's strict-dataclass errors
        VideoARConfig.from_preset("tiny", guidance_frames=value)
