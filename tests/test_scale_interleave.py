"""Scales drawn in interleaved passes (`VideoARConfig.scale_interleave`): the mask, the cached passes, the pipeline and
training, through the public API."""

import json

import pytest
import torch

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTransformer
from videoar_hf.quantizer import MultiScaleBitwiseQuantizer
from videoar_hf.scale_schedule import get_scale_sizes, interleave_groups
from videoar_hf.testing_utils import tiny_pipeline

SCHEDULE = [1, 2, 4]
INTERLEAVE = [1, 2, 2]  # the 2x2 scale one cell a pass, the 4x4 one in four passes of four cells


def make_model(interleave=INTERLEAVE, seed=0):
    torch.manual_seed(seed)
    model = VideoARTransformer(VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, scale_interleave=interleave))
    if hasattr(model, "pass_context"):  # zero at init; random here so that what it sees shows in the logits
        torch.nn.init.normal_(model.pass_context.weight, std=0.2)
    return model.eval()


def make_clip(batch=2, frames=3, seed=0, flip_rate=0.0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 8, frames, 4, 4, generator=g)
    rates = torch.full((batch, frames, len(SCHEDULE)), flip_rate)
    pyramid = MultiScaleBitwiseQuantizer(8).residual_quantize(latents, get_scale_sizes(SCHEDULE, 4, 4), rates, g)
    return pyramid, torch.randn(batch, 5, 32, generator=g)


@pytest.mark.parametrize(
    "interleave",
    [[1, 2], [1, 2, 2, 2], [1, 3, 2], [2, 1, 1], [1, 0, 2], [1, 2.0, 2], [1, True, 2]],
)
def test_a_bad_scale_interleave_is_refused_by_name(interleave):
    with pytest.raises(Exception, match="scale_interleave"):  # huggingface_hub's strict-dataclass errors
        VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, scale_interleave=interleave)


def test_the_groups_of_a_pass_never_touch():
    groups = interleave_groups(4, 6, 2)
    assert groups.tolist()[:2] == [[0, 1, 0, 1, 0, 1], [2, 3, 2, 3, 2, 3]]
    for stride in (2, 3):
        groups = interleave_groups(6, 6, stride)
        for group in range(stride * stride):
            rows, cols = (groups == group).nonzero().unbind(-1)
            distance = torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs())
            assert (distance + stride * torch.eye(len(rows), dtype=torch.long) >= stride).all()


def test_every_cached_pass_gives_the_teacher_forced_logits_of_its_cells():
    model = make_model()
    pyramid, text = make_clip(flip_rate=0.2)  # error correction's flipped bits, as training sees them
    with torch.no_grad():
        teacher = model(pyramid.scale_inputs, text, scale_bits=pyramid.accumulated_bits).logits
        layout = model.token_layout(3, 4, 4)
        pass_N = layout.pass_ids(layout.token_coords())
        cache = model.init_cache(4, 4)
        assert cache.passes == ((0, 0), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3))
        for t in range(3):
            for k, stride in enumerate(INTERLEAVE):
                for group in range(stride * stride):
                    assert cache.next_pass == (t, k, group)
                    scale_input = None if (t, k) == (0, 0) else pyramid.scale_inputs[k][:, t]
                    bits = pyramid.accumulated_bits[k][:, t] if stride > 1 else None
                    logits = model(scale_input, text, cache=cache, scale_bits=bits).logits
                    torch.testing.assert_close(logits, teacher[:, pass_N == cache.num_blocks - 1], atol=1e-5, rtol=1e-4)


def test_a_pass_sees_the_bits_of_its_scales_earlier_passes_and_no_others():
    model = make_model()
    pyramid, text = make_clip(frames=1)
    layout = model.token_layout(1, 4, 4)
    coords = layout.token_coords()
    pass_N = layout.pass_ids(coords)
    with torch.no_grad():
        before = model(pyramid.scale_inputs, text, scale_bits=pyramid.accumulated_bits).logits
        for row, col in [(0, 0), (1, 1)]:  # a cell of the 4x4 scale's first pass, then of its last
            bits = [b.clone() for b in pyramid.accumulated_bits]
            bits[2][:, :, row, col] ^= True
            after = model(pyramid.scale_inputs, text, scale_bits=bits).logits
            changed_N = (after - before).abs().amax((0, 2)) > 1e-6
            own_pass = pass_N[(coords[:, 1] == 2) & (coords[:, 2] == row) & (coords[:, 3] == col)].item()
            assert set(pass_N[changed_N].tolist()) == set(range(own_pass + 1, layout.passes.__len__()))
        # the coarser scales' bits reach the model through `scale_inputs` only
        bits = [b.clone() for b in pyramid.accumulated_bits]
        bits[0] ^= True
        torch.testing.assert_close(model(pyramid.scale_inputs, text, scale_bits=bits).logits, before)


def test_an_interleaved_model_asks_for_scale_bits_and_a_plain_one_ignores_them():
    pyramid, text = make_clip()
    with pytest.raises(ValueError, match="pass `scale_bits`"):
        make_model()(pyramid.scale_inputs, text)
    with pytest.raises(ValueError, match="`scale_bits` must be laid out as `scale_inputs`"):
        make_model()(pyramid.scale_inputs, text, scale_bits=pyramid.accumulated_bits[:2])
    plain = make_model(interleave=None)
    assert not hasattr(plain, "pass_context")
    with torch.no_grad():
        torch.testing.assert_close(
            plain(pyramid.scale_inputs, text).logits,
            plain(pyramid.scale_inputs, text, scale_bits=pyramid.accumulated_bits).logits,
        )


def interleaved_pipeline() -> VideoARPipeline:
    pipe = tiny_pipeline()
    pipe = VideoARPipeline(
        video_tokenizer=pipe.video_tokenizer, transformer=make_model(), text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_draws_an_interleaved_scale_pass_by_pass_and_reloads(tmp_path):
    pipe = interleaved_pipeline()
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, kwargs, out: calls.append(out.logits.shape[1]),
                                           with_kwargs=True)  # fmt: skip
    video = pipe("a red square moving left", num_frames=9, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert video.frames.shape == (1, 9, 3, 32, 32)
    # 3 latent frames of 9 passes: the 1x1 scale, the 2x2 one a cell at a time, the 4x4 one four cells at a time
    assert calls == [1, 1, 1, 1, 1, 4, 4, 4, 4] * 3
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = VideoARPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    assert reloaded.transformer.config.scale_interleave == INTERLEAVE
    again = reloaded("a red square moving left", num_frames=9, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(again.frames, video.frames)


def test_a_continuation_prefills_the_given_frame_with_its_bits():
    pipe = interleaved_pipeline()
    first = torch.rand(1, 3, 32, 32)
    calls = []
    pipe.transformer.register_forward_hook(lambda module, args, kwargs, out: calls.append(out.logits.shape[1]),
                                           with_kwargs=True)  # fmt: skip
    video = pipe("a red square moving left", image=first, num_frames=9, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert video.shape == (1, 9, 3, 32, 32)
    assert calls == [21] + [1, 1, 1, 1, 1, 4, 4, 4, 4] * 2  # the given frame's 21 tokens in one pass


def test_training_an_interleaved_transformer_learns_the_pass_context(components, tmp_path):
    import importlib.util
    from pathlib import Path

    script_path = Path(__file__).resolve().parents[1] / "examples" / "train_videoar.py"
    spec = importlib.util.spec_from_file_location("train_videoar", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args([
        "--tokenizer", str(components / "tokenizer"), "--text_encoder", str(components / "text_encoder"),
        "--output_dir", str(tmp_path), "--dataset", "shapes", "--num_clips", "8", "--resolution", "32",
        "--num_frames", "5", "--train_batch_size", "4", "--learning_rate", "3e-3", "--report_to", "none",
        "--max_train_steps", "3", "--validation_prompts", "--transformer_config",
        json.dumps({"scale_interleave": INTERLEAVE}),
    ])  # fmt: skip
    transformer = VideoARTransformer.from_pretrained(script.main(args) / "transformer")
    assert transformer.config.scale_interleave == INTERLEAVE
    assert transformer.pass_context.weight.abs().max() > 0  # zero at init: only the later passes' loss moved it
