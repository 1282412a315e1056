"""attn_implementation="flex_attention": the BlockMask is the dense block-causal mask (docs/method.md §3), and flex
gives SDPA's outputs, teacher-forced and cached. On CPU each new shape compiles flex's kernel (seconds, once per
process; inductor's disk cache makes later runs faster)."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask
from test_transformer import SCHEDULE, make_clip, run_cached

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.attention_mask import TEXT_BLOCK, BlockCausalRule, block_causal_mask, to_additive_mask
from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes


def make_model(implementation: str, **overrides) -> VideoARTransformer:
    torch.manual_seed(0)
    config = VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, **overrides)
    model = VideoARTransformer._from_config(config, attn_implementation=implementation).eval()
    assert model.config._attn_implementation == implementation
    return model


def clip_rule(num_frames=4, grid=8, text=(6, 3), frame_keep=None, causal_text=False) -> BlockCausalRule:
    """A teacher-forced rule over two samples whose prompts have `text` tokens, padded to the longer."""
    sizes = get_scale_sizes([1, 2, 4, 8], grid, grid)
    coords = TokenLayout(num_frames, tuple(sizes)).token_coords()
    text_ids = torch.full((max(text),), TEXT_BLOCK)
    blocks = torch.cat([text_ids, coords[:, 0] * len(sizes) + coords[:, 1]])
    frames = torch.cat([text_ids, coords[:, 0]])
    valid = torch.ones(len(text), len(blocks), dtype=torch.bool)
    for b, length in enumerate(text):
        valid[b, length : max(text)] = False
    return BlockCausalRule(blocks, frames, blocks, frames, valid, frame_keep, causal_text)


def cached_step_rule(rule: BlockCausalRule, start: int, stop: int) -> BlockCausalRule:
    """The rule of a cached step: queries `start..stop`, keys everything before `stop`."""
    return BlockCausalRule(rule.query_blocks_N[start:stop], rule.query_frames_N[start:stop], rule.key_blocks_M[:stop],
                           rule.key_frames_M[:stop], rule.key_valid_BM[:, :stop], rule.frame_keep_BTT,
                           rule.causal_text)  # fmt: skip


def random_keep() -> torch.Tensor:
    return torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5


RULES = {
    "padded text": lambda: clip_rule(),
    "frame keep table": lambda: clip_rule(frame_keep=random_keep()),
    "cached step": lambda: cached_step_rule(clip_rule(), 6 + 3 * 85 + 21, 6 + 4 * 85),  # frame 3, finest scale
    "causal text": lambda: clip_rule(causal_text=True, frame_keep=random_keep()),
    "causal text, first cached step": lambda: cached_step_rule(clip_rule(causal_text=True), 0, 6 + 1),
    "causal text, cached step": lambda: cached_step_rule(clip_rule(causal_text=True), 6 + 2 * 85 + 5, 6 + 2 * 85 + 21),
}


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("block_size", [16, 128])
def test_block_mask_is_the_dense_mask(name, block_size):
    rule = RULES[name]()
    B, N, M = rule.shape
    dense = rule.dense()
    block_mask = rule.block_mask(block_size)
    # tile by tile, what torch's create_block_mask makes of the same rule
    reference = create_block_mask(rule, B, None, N, M, device="cpu", BLOCK_SIZE=block_size)
    for ours, theirs in zip(block_mask.as_tuple(), reference.as_tuple()):
        if torch.is_tensor(ours):
            assert torch.equal(ours, theirs)
    assert block_mask.seq_lengths == (N, M)
    # exactly: the tiles it computes, with its mask_mod (the kernel's padded tables) inside them
    tiles = block_mask.to_dense().repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)[:, :, :N, :M]
    assert torch.equal(tiles.bool() & create_mask(block_mask.mask_mod, B, 1, N, M, device="cpu"), dense)
    assert torch.equal(dense, block_causal_mask(rule.query_blocks_N, rule.query_frames_N, rule.key_blocks_M,
                                                rule.key_frames_M, rule.key_valid_BM, rule.frame_keep_BTT,
                                                rule.causal_text))  # fmt: skip


def test_dense_additive_mask_is_built_in_place_and_aligned():
    rule = clip_rule(num_frames=2)
    additive = rule.dense(torch.float32)
    torch.testing.assert_close(additive, to_additive_mask(rule.dense(), torch.float32), atol=0, rtol=0)
    assert additive.stride(-2) % 16 == 0, "rows aligned: SDPA's memory-efficient kernel would copy the mask"
    assert additive[0, 0, 0, 0] == 0 and additive[1, 0, 0, 4] == torch.finfo(torch.float32).min  # padding hidden


def test_causal_and_bidirectional_text_masks_are_cached_apart():
    model = make_model("flex_attention")
    causal, bidirectional = clip_rule(causal_text=True), clip_rule(causal_text=False)
    assert causal.fingerprint() != bidirectional.fingerprint()
    model.block_mask_cache.clear()
    model.block_mask_cache.get(causal)
    model.block_mask_cache.get(bidirectional)
    assert len(model.block_mask_cache) == 2 and model.block_mask_cache.misses == 2


@pytest.fixture(scope="module")
def models():
    return {implementation: make_model(implementation) for implementation in ("sdpa", "flex_attention")}


@pytest.mark.parametrize("window", [None, 1])
def test_flex_equals_sdpa_teacher_forced(models, window):
    pyramid, text, mask = make_clip()  # sample 1's prompt is padded
    T = pyramid.scale_inputs[0].shape[1]
    frame_keep = None if window is None else (torch.arange(T)[:, None] - torch.arange(T)[None, :] <= window)
    frame_keep = None if frame_keep is None else frame_keep[None].expand(2, -1, -1)
    with torch.no_grad():
        logits = {k: m(pyramid.scale_inputs, text, mask, frame_keep=frame_keep).logits for k, m in models.items()}
    torch.testing.assert_close(logits["flex_attention"], logits["sdpa"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window, text_attention", [(None, "causal"), (1, "causal"), (None, "bidirectional")])
def test_flex_equals_sdpa_in_cached_sampling(window, text_attention):
    pyramid, text, mask = make_clip()
    logits = {}
    for implementation in ("sdpa", "flex_attention"):
        model = make_model(implementation, frame_mask_window=window, text_attention=text_attention)
        with torch.no_grad():
            logits[implementation] = run_cached(model, pyramid, text, mask)
            if implementation == "flex_attention":
                teacher_forced = model(pyramid.scale_inputs, text, mask).logits
    torch.testing.assert_close(logits["flex_attention"], logits["sdpa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["flex_attention"], teacher_forced, atol=1e-5, rtol=1e-5)


def test_block_masks_are_cached_per_layout(models):
    model = models["flex_attention"]
    model.block_mask_cache.clear()
    pyramid, text, mask = make_clip()
    with torch.no_grad():
        first = model(pyramid.scale_inputs, text, mask).logits
        hits, misses = model.block_mask_cache.hits, model.block_mask_cache.misses
        second = model(pyramid.scale_inputs, text, mask).logits
        assert (model.block_mask_cache.hits, model.block_mask_cache.misses) == (hits + 1, misses)
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model(pyramid.scale_inputs, text, torch.ones_like(mask))  # other text padding: another mask
        assert model.block_mask_cache.misses == misses + 1 and len(model.block_mask_cache) == 2
        # a Random Frame Mask draw never recurs: built, used, not kept (forward-only training pass on CPU)
        model.train()
        try:
            model(pyramid.scale_inputs, text, mask)
        finally:
            model.eval()
    assert len(model.block_mask_cache) == 2 and model.block_mask_cache.misses == misses + 1


def test_training_with_flex_on_cpu_is_an_error_naming_the_fix():
    model = make_model("flex_attention").train()
    pyramid, text, mask = make_clip()
    with pytest.raises(ValueError, match="attn_implementation='flex_attention' cannot train on CPU.*'sdpa'"):
        model(pyramid.scale_inputs, text, mask, labels=pyramid.bits)
    model.set_attn_implementation("sdpa")
    model(pyramid.scale_inputs, text, mask, labels=pyramid.bits).loss.backward()
    assert model.input_proj.weight.grad is not None
