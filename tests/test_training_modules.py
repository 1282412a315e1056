"""Cross-Frame Error Correction (docs/method.md §5) and Random Frame Mask (§6): training-only modules."""

import subprocess
import sys

import pytest
import torch

from videoar_hf import VideoARConfig
from videoar_hf.attention_mask import TEXT_BLOCK, block_causal_mask
from videoar_hf.error_correction import error_corrected_pyramid, sample_flip_rates
from videoar_hf.quantizer import MultiScaleBitwiseQuantizer
from videoar_hf.random_frame_mask import random_frame_keep
from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes

SIZES = get_scale_sizes([1, 2, 4], 4, 4)


def test_flip_rates_follow_the_time_dependent_ranges():
    rates = sample_flip_rates(4000, 5, 3, 0.0, 0.25, 0.01, inheritance=False, generator=torch.Generator().manual_seed(0))
    for t in range(5):
        low, high = 0.01 * t, 0.25 + 0.01 * t
        assert rates[:, t].min() >= low and rates[:, t].max() <= high
        # the whole range is used, uniformly
        assert rates[:, t].min() < low + 0.01 and rates[:, t].max() > high - 0.01
        assert rates[:, t].mean().item() == pytest.approx((low + high) / 2, abs=0.01)


def test_first_scale_inherits_the_previous_frames_last_rate():
    rates = sample_flip_rates(4000, 5, 3, 0.0, 0.25, 0.01, inheritance=True, generator=torch.Generator().manual_seed(0))
    assert (rates[:, 1:, 0] >= rates[:, :-1, -1]).all(), "lower bound is the rate at frame t-1's last scale"
    for t in range(1, 5):
        assert rates[:, t, 0].max() <= 0.25 + 0.01 * t
        assert rates[:, t, 1:].min() >= 0.01 * t
    # frame 0 has nothing to inherit
    assert rates[:, 0, 0].min() < 0.01


def test_targets_are_recomputed_against_the_corrupted_history():
    quantizer = MultiScaleBitwiseQuantizer(8)
    latents = torch.randn(2, 8, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    clean = quantizer.residual_quantize(latents, SIZES)
    # flip every bit of scale 0 only
    rates = torch.zeros(2, 2, 3)
    rates[:, :, 0] = 1.0
    corrupted = quantizer.residual_quantize(latents, SIZES, rates)
    assert torch.equal(corrupted.bits[0], clean.bits[0]), "scale 0 targets are clean; the flip comes after"
    # by hand: scale 1's target is BSQ of the residual against the flipped scale-0 code
    flipped_codes = quantizer.codes_from_bits(~clean.bits[0]).flatten(0, 1).permute(0, 3, 1, 2)
    reconstruction = quantizer.upsample(flipped_codes, (4, 4))
    residual = latents.transpose(1, 2).flatten(0, 1) - reconstruction
    expected = (quantizer.downsample(residual, SIZES[1]).permute(0, 2, 3, 1) >= 0).reshape(2, 2, 2, 2, 8)
    assert torch.equal(corrupted.bits[1], expected)
    assert not torch.equal(corrupted.bits[1], clean.bits[1])
    # and scale 1's input is the corrupted reconstruction, resampled
    expected_input = quantizer.downsample(reconstruction, SIZES[1]).permute(0, 2, 3, 1).reshape(2, 2, 2, 2, 8)
    torch.testing.assert_close(corrupted.scale_inputs[1], expected_input)


def test_next_frame_starts_from_the_corrupted_reconstruction():
    quantizer = MultiScaleBitwiseQuantizer(8)
    latents = torch.randn(1, 8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    pyramid = quantizer.residual_quantize(latents, SIZES, torch.full((1, 3, 3), 0.3), torch.Generator().manual_seed(0))
    previous = pyramid.features[:, :, :-1].transpose(1, 2).flatten(0, 1)
    expected = quantizer.downsample(previous, SIZES[0]).permute(0, 2, 3, 1).reshape(1, 2, 1, 1, 8)
    torch.testing.assert_close(pyramid.scale_inputs[0][:, 1:], expected)
    assert pyramid.scale_inputs[0][:, 0].abs().sum() == 0


def test_error_correction_follows_the_config():
    quantizer = MultiScaleBitwiseQuantizer(8)
    latents = torch.randn(2, 8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    clean = quantizer.residual_quantize(latents, SIZES)
    off = error_corrected_pyramid(quantizer, latents, SIZES, VideoARConfig.from_preset("tiny", error_correction=False))
    assert all(torch.equal(a, b) for a, b in zip(off.bits, clean.bits))
    on = error_corrected_pyramid(
        quantizer, latents, SIZES, VideoARConfig.from_preset("tiny"), generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(on.features, clean.features)


def test_zero_flip_rate_is_the_plain_quantizer():
    quantizer = MultiScaleBitwiseQuantizer(8)
    latents = torch.randn(2, 8, 3, 4, 4)
    clean = quantizer.residual_quantize(latents, SIZES)
    zero = quantizer.residual_quantize(latents, SIZES, torch.zeros(2, 3, 3))
    assert torch.equal(zero.features, clean.features)


def test_random_frame_mask_keeps_text_and_current_frame_and_respects_the_window():
    T, window = 6, 2
    keep = random_frame_keep(500, T, mask_prob=0.5, window=window, generator=torch.Generator().manual_seed(0))
    assert keep.diagonal(dim1=1, dim2=2).all(), "a frame always sees itself"
    t, s = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    outside = (t - s) > window
    assert not keep[:, outside].any(), "frames outside the window are never attended"
    inside_past = (s < t) & ~outside
    assert keep[:, inside_past].float().mean().item() == pytest.approx(0.5, abs=0.03)

    # through the attention mask: text and the query's own frame stay visible whatever was dropped
    layout = TokenLayout(T, tuple(SIZES))
    coords = layout.token_coords()
    blocks = torch.cat([torch.full((2,), TEXT_BLOCK), coords[:, 0] * 3 + coords[:, 1]])
    frames = torch.cat([torch.full((2,), TEXT_BLOCK), coords[:, 0]])
    drop_all = torch.eye(T, dtype=torch.bool)[None]
    mask = block_causal_mask(blocks, frames, blocks, frames, torch.ones(1, len(blocks), dtype=torch.bool), drop_all)
    mask = mask[0, 0]
    for frame in range(T):
        rows = frames == frame
        assert mask[rows][:, :2].all(), "text always visible"
        own = frames == frame
        block_ids = blocks[rows]
        assert (mask[rows][:, own] == (blocks[own][None, :] <= block_ids[:, None])).all()
        assert not mask[rows][:, (frames >= 0) & (frames < frame)].any()


def test_random_frame_mask_is_on_in_training_and_off_in_eval():
    from videoar_hf import VideoARTransformer

    torch.manual_seed(0)
    model = VideoARTransformer(VideoARConfig.from_preset("tiny", scale_schedule=[1, 2, 4], frame_mask_prob=0.9))
    quantizer = MultiScaleBitwiseQuantizer(8)
    pyramid = quantizer.residual_quantize(torch.randn(1, 8, 4, 4, 4), SIZES)
    text = torch.randn(1, 3, 32)
    with torch.no_grad():
        model.eval()
        eval_a, eval_b = (model(pyramid.scale_inputs, text).logits for _ in range(2))
        model.train()
        train_a, train_b = (model(pyramid.scale_inputs, text).logits for _ in range(2))
    assert torch.equal(eval_a, eval_b)
    assert not torch.equal(train_a, train_b)


def test_inference_never_imports_the_training_modules():
    code = (
        "import sys, torch, videoar_hf\n"
        "from videoar_hf.testing_utils import tiny_pipeline\n"
        "tiny_pipeline()('a red circle', num_frames=5)\n"
        "bad = [m for m in ('videoar_hf.error_correction', 'videoar_hf.random_frame_mask') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
