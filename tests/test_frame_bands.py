"""SDPA runs the block-causal rule one query frame at a time (`BlockCausalRule.frame_bands`): the bands put together
are the dense mask, and a model over them gives eager attention's logits and gradients (docs/method.md §3)."""

from unittest import mock

import pytest
import torch
from test_flex_attention import RULES, clip_rule
from test_transformer import SCHEDULE, make_clip, run_cached

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.attention_mask import BlockCausalRule, frame_window_keep
from videoar_hf.random_frame_mask import random_frame_keep


def band_keys(bands, num_keys: int) -> list[torch.Tensor]:
    """The key indices of every band."""
    starts = [0, *torch.cumsum(torch.tensor(bands.key_sizes), 0).tolist()]

    def keys(runs):
        if runs is None:
            return torch.arange(num_keys)
        return torch.cat([torch.arange(starts[r], starts[r + 1]) for r in runs])

    return [keys(runs) for runs in bands.key_runs]


@pytest.mark.parametrize("name", list(RULES))
def test_bands_put_together_are_the_dense_mask(name):
    rule = RULES[name]()
    B, N, M = rule.shape
    bands = rule.frame_bands(torch.bool)
    assert sum(bands.query_sizes) == N and sum(bands.key_sizes) == M
    together = torch.zeros(B, 1, N, M, dtype=torch.bool)
    query_starts = [0, *torch.cumsum(torch.tensor(bands.query_sizes), 0).tolist()]
    for i, (keys, mask) in enumerate(zip(band_keys(bands, M), bands.masks, strict=True)):
        together[:, :, query_starts[i] : query_starts[i + 1], keys] = mask
    assert torch.equal(together, rule.dense())


def test_bands_skip_later_frames_and_frames_outside_the_window():
    rule = clip_rule(num_frames=4, frame_keep=frame_window_keep(2, 4, window=1))
    bands = rule.frame_bands(torch.float32)
    text, frame_tokens = 6, 85
    assert bands.query_sizes == [text] + [frame_tokens] * 4
    assert bands.key_runs == [[0], [0, 1], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    lengths = [len(keys) for keys in band_keys(bands, rule.shape[2])]
    assert lengths == [text, text + frame_tokens] + [text + 2 * frame_tokens] * 3
    assert bands.masks[-1].stride(-2) % 16 == 0, "rows aligned, as the dense mask's"


def make_model(implementation: str, **overrides) -> VideoARTransformer:
    torch.manual_seed(0)
    config = VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, **overrides)
    return VideoARTransformer._from_config(config, attn_implementation=implementation)


@pytest.mark.parametrize("window", [None, 1])
def test_sdpa_bands_train_as_eager_attention(window):
    pyramid, text, mask = make_clip(frames=4)
    frame_keep = random_frame_keep(2, 4, 0.5, window, torch.Generator().manual_seed(0))
    results = {}
    for implementation in ("eager", "sdpa"):
        model = make_model(implementation, frame_mask_window=window).train()
        bands = BlockCausalRule.frame_bands
        with mock.patch.object(BlockCausalRule, "frame_bands", autospec=True, side_effect=bands) as spy:
            output = model(pyramid.scale_inputs, text, mask, labels=pyramid.bits, frame_keep=frame_keep)
        assert spy.call_count == (implementation == "sdpa"), "SDPA runs over the bands, once per pass; eager does not"
        output.loss.backward()
        results[implementation] = output.logits, [p.grad for p in model.parameters()]
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0], atol=1e-5, rtol=1e-5)
    for sdpa_grad, eager_grad in zip(results["sdpa"][1], results["eager"][1], strict=True):
        torch.testing.assert_close(sdpa_grad, eager_grad, atol=1e-5, rtol=1e-4)


def test_sdpa_bands_in_bf16_autocast_match_eager():
    pyramid, text, mask = make_clip(frames=4)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = make_model(implementation, frame_mask_window=2).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits[implementation] = model(pyramid.scale_inputs, text, mask).logits.float()
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=0.05, rtol=0.05)


def test_cached_sdpa_steps_equal_teacher_forcing_in_a_window():
    model = make_model("sdpa", frame_mask_window=1).eval()
    pyramid, text, mask = make_clip(frames=4)
    with torch.no_grad():
        teacher_forced = model(pyramid.scale_inputs, text, mask).logits
        cached = run_cached(model, pyramid, text, mask)
    torch.testing.assert_close(cached, teacher_forced, atol=1e-5, rtol=1e-5)
