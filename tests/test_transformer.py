import pytest
import torch
from transformers import AutoConfig, AutoModel

import videoar_hf  # noqa: F401  registers the Auto classes
from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.attention_mask import TEXT_BLOCK, block_causal_mask, frame_window_keep
from videoar_hf.configuration_videoar import VIDEOAR_PRESETS
from videoar_hf.modeling_videoar import IGNORE_INDEX
from videoar_hf.quantizer import MultiScaleBitwiseQuantizer
from videoar_hf.rope import text_position_ids, video_position_ids
from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes

SCHEDULE = [1, 2, 4]


def make_model(**overrides):
    torch.manual_seed(0)
    return VideoARTransformer(VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, **overrides)).eval()


def make_clip(batch=2, frames=3, bits=8, grid=4, seed=0):
    """A random latent clip, its pyramid, and text states with different prompt lengths per sample."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, bits, frames, grid, grid, generator=g)
    pyramid = MultiScaleBitwiseQuantizer(bits).residual_quantize(latents, get_scale_sizes(SCHEDULE, grid, grid))
    text = torch.randn(batch, 6, 32, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[1, 4:] = 0  # sample 1 has a 4-token prompt, right-padded
    return pyramid, text, mask


def run_cached(model, pyramid, text, mask, **prefix):
    """Sample-time path: one cached pass per (frame, scale) block, fed the teacher-forced inputs. `prefix`:
    `class_labels=` for a class-conditional model (then `text` and `mask` are None)."""
    B, T = pyramid.scale_inputs[0].shape[:2]
    cache = model.init_cache(*pyramid.scale_inputs[-1].shape[2:4])
    logits = []
    for t in range(T):
        for k in range(len(SCHEDULE)):
            x = None if (t, k) == (0, 0) else pyramid.scale_inputs[k][:, t]
            logits.append(model(x, text, mask, cache=cache, **prefix).logits)
    return torch.cat(logits, dim=1)


def test_rope_positions_match_the_papers_figure_2():
    # a 5-token prompt: frame 0's first scale sits at (5, 5, 5), frame 1's at (6, 5, 5) (docs/method.md §4)
    sizes = get_scale_sizes([1, 2, 4], 4, 4)
    layout = TokenLayout(2, tuple(sizes))
    coords = layout.token_coords()
    positions = video_position_ids(coords, torch.tensor([5]), sizes)[0]
    assert positions[layout.block_slice(0, 0)].tolist() == [[5.0, 5.0, 5.0]]
    assert positions[layout.block_slice(1, 0)].tolist() == [[6.0, 5.0, 5.0]]
    # scale 2 of frame 1 (a 4x4 grid): cell (h, w) -> (6, 5 + h, 5 + w)
    block = positions[layout.block_slice(1, 2)].reshape(4, 4, 3)
    assert block[2, 3].tolist() == [6.0, 7.0, 8.0]
    assert text_position_ids(1, 5)[0].tolist() == [[i, i, i] for i in range(5)]


def test_rope_finest_positions_rescale_coarse_grids():
    sizes = get_scale_sizes([1, 2, 4], 4, 4)
    layout = TokenLayout(1, tuple(sizes))
    positions = video_position_ids(layout.token_coords(), torch.tensor([0]), sizes, "finest")[0]
    assert positions[layout.block_slice(0, 1)].reshape(2, 2, 3)[1, 1].tolist() == [0.0, 2.0, 2.0]


def test_rope_axes_default_to_equal_thirds_and_are_configurable():
    assert VideoARConfig(hidden_size=96, num_attention_heads=2).rope_axes_dim == [16, 16, 16]
    assert VideoARConfig.from_preset("L").rope_axes_dim == [44, 42, 42]
    assert VideoARConfig(hidden_size=64, num_attention_heads=2, rope_axes_dim=[16, 8, 8]).rope_axes_dim == [16, 8, 8]
    with pytest.raises(Exception, match="rope_axes_dim"):
        VideoARConfig(hidden_size=64, num_attention_heads=2, rope_axes_dim=[16, 8, 6])


def test_block_causal_mask():
    sizes = [(1, 1), (2, 2)]
    layout = TokenLayout(2, tuple(sizes))
    coords = layout.token_coords()
    blocks = torch.cat([torch.full((3,), TEXT_BLOCK), coords[:, 0] * 2 + coords[:, 1]])
    frames = torch.cat([torch.full((3,), TEXT_BLOCK), coords[:, 0]])
    valid = torch.tensor([[True, True, False] + [True] * layout.num_tokens])
    mask = block_causal_mask(blocks, frames, blocks, frames, valid)[0, 0]
    text, video = slice(0, 3), slice(3, None)
    assert not mask[text, video].any(), "text must not see video"
    assert not mask[:, 2].any(), "padding must be invisible"
    assert mask[video, :2].all(), "every video token sees the real text"
    f0s1 = slice(3 + 1, 3 + 5)
    f1s0 = 3 + 5
    assert mask[f0s1, f0s1].all(), "full attention inside a block"
    assert not mask[3, f0s1].any(), "a coarse scale cannot see a finer one"
    assert mask[f1s0, 3:f1s0].all() and not mask[f1s0, f1s0 + 1 :].any(), "next frame sees the previous frame only"


def test_frame_window():
    keep = frame_window_keep(1, 5, window=2)[0]
    assert keep[4].tolist() == [False, False, True, True, True]
    assert frame_window_keep(1, 5, None) is None


@pytest.mark.parametrize("spatial_positions", ["raw", "finest", "centre"])
@pytest.mark.parametrize("text_attention", ["causal", "bidirectional"])
def test_cached_steps_equal_teacher_forcing(spatial_positions, text_attention):
    model = make_model(rope_spatial_positions=spatial_positions, text_attention=text_attention)
    pyramid, text, mask = make_clip()
    with torch.no_grad():
        teacher_forced = model(pyramid.scale_inputs, text, mask).logits
        cached = run_cached(model, pyramid, text, mask)
    torch.testing.assert_close(cached, teacher_forced, atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_attention_agree():
    pyramid, text, mask = make_clip()
    logits = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        config = VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE)
        model = VideoARTransformer._from_config(config, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model(pyramid.scale_inputs, text, mask).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-5)


def test_cached_steps_respect_the_frame_window():
    model = make_model(frame_mask_window=1)
    pyramid, text, mask = make_clip(frames=4)
    with torch.no_grad():
        teacher_forced = model(pyramid.scale_inputs, text, mask).logits
        cached = run_cached(model, pyramid, text, mask)
        unlimited = make_model()(pyramid.scale_inputs, text, mask).logits
    torch.testing.assert_close(cached, teacher_forced, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(teacher_forced, unlimited)


def test_padded_batch_equals_each_prompt_alone():
    model = make_model()
    pyramid, text, mask = make_clip()
    with torch.no_grad():
        batched = model(pyramid.scale_inputs, text, mask).logits
        for i, length in enumerate(mask.sum(-1).tolist()):
            alone = model([x[i : i + 1] for x in pyramid.scale_inputs], text[i : i + 1, :length]).logits
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["infinity", "uniform"])
def test_loss_is_bitwise_cross_entropy_and_falls_when_training(weighting):
    model = make_model(frame_mask_prob=0.0, loss_scale_weighting=weighting).train()
    pyramid, text, mask = make_clip()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(pyramid.scale_inputs, text, mask, labels=pyramid.bits)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    labels = torch.cat([b.reshape(2, 3, -1, 8) for b in pyramid.bits], 2).reshape(2, -1, 8).float()
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels, reduction="none").mean(-1)
    # scales 1x1, 2x2, 4x4 of a 4x4 grid, 3 frames: Infinity weighs a token sqrt(16 / (h w)) = 4, 2, 1
    per_scale = {"infinity": [4.0, 2.0, 1.0], "uniform": [1.0, 1.0, 1.0]}[weighting]
    weights = torch.tensor([per_scale[0]] * 1 + [per_scale[1]] * 4 + [per_scale[2]] * 16).repeat(3)
    expected = (per_token * weights / weights.sum()).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)
    assert losses[-1] < 0.75 * losses[0]


@pytest.mark.parametrize("weighting", ["infinity", "uniform"])
def test_the_given_frames_of_a_continuation_are_left_out_of_the_loss(weighting):
    """`without_context` labels a continuing clip's first frames IGNORE_INDEX: the loss is then that sample's
    weighted mean over the frames it keeps, averaged with the other sample's mean over all of its frames."""
    from videoar_hf.training.text_to_video import without_context

    model = make_model(frame_mask_prob=0.0, loss_scale_weighting=weighting).eval()
    pyramid, text, mask = make_clip()  # 2 samples, 3 frames of scales 1x1, 2x2, 4x4: 21 tokens a frame
    labels = without_context(pyramid.bits, [True, False], context_frames=2)
    assert all((b[0, :2] == IGNORE_INDEX).all() and (b[0, 2:] >= 0).all() and (b[1] >= 0).all() for b in labels)
    with torch.no_grad():
        out = model(pyramid.scale_inputs, text, mask, labels=labels)
        whole = model(pyramid.scale_inputs, text, mask, labels=pyramid.bits).loss
    bits = torch.cat([b.reshape(2, 3, -1, 8) for b in pyramid.bits], 2).reshape(2, -1, 8).float()
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, bits, reduction="none").mean(-1)
    per_scale = {"infinity": [4.0, 2.0, 1.0], "uniform": [1.0, 1.0, 1.0]}[weighting]
    weights = torch.tensor([per_scale[0]] * 1 + [per_scale[1]] * 4 + [per_scale[2]] * 16).repeat(3)
    kept = slice(2 * 21, None)
    continuing = (per_token[0, kept] * weights[kept]).sum() / weights[kept].sum()
    torch.testing.assert_close(out.loss, (continuing + (per_token[1] * weights).sum() / weights.sum()) / 2)
    assert not torch.allclose(out.loss, whole)


def test_gradient_checkpointing_gives_the_same_gradients():
    pyramid, text, mask = make_clip()
    grads = []
    for checkpointing in (False, True):
        model = make_model(frame_mask_prob=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.layers)
        loss = model(pyramid.scale_inputs, text, mask, labels=pyramid.bits).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_wrong_scale_inputs_are_rejected():
    model = make_model()
    pyramid, text, mask = make_clip()
    with pytest.raises(ValueError, match="scale_inputs"):
        model(pyramid.scale_inputs[1:], text, mask)
    with pytest.raises(ValueError, match="text_hidden_size"):
        model(pyramid.scale_inputs, text[..., :16], mask)


def test_save_and_reload_give_identical_logits(tmp_path):
    model = make_model()
    pyramid, text, mask = make_clip()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    for reloaded in (VideoARTransformer.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert isinstance(reloaded, VideoARTransformer)
        with torch.no_grad():
            torch.testing.assert_close(
                reloaded.eval()(pyramid.scale_inputs, text, mask).logits,
                model(pyramid.scale_inputs, text, mask).logits,
                atol=0,
                rtol=0,
            )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VideoARConfig)


def test_extend_scale_schedule_keeps_every_weight_and_starts_the_new_scale_as_the_finest(tmp_path):
    """A transformer trained on a coarser tokenizer grows to a finer one's scales (`train_videoar.py` does it)."""
    model = make_model(frame_mask_prob=0.0)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.extend_scale_schedule([1, 2, 4, 8])
    after = model.state_dict()
    assert model.config.scale_schedule == [1, 2, 4, 8] and after.keys() == before.keys()
    for name, tensor in before.items():
        if name != "scale_embed.weight":
            assert torch.equal(after[name], tensor), name
    torch.testing.assert_close(after["scale_embed.weight"], torch.cat([before["scale_embed.weight"], before["scale_embed.weight"][-1:]]))
    g = torch.Generator().manual_seed(0)
    pyramid = MultiScaleBitwiseQuantizer(8).residual_quantize(torch.randn(2, 8, 2, 8, 8, generator=g), get_scale_sizes([1, 2, 4, 8], 8, 8))
    text, mask = torch.randn(2, 6, 32, generator=g), torch.ones(2, 6, dtype=torch.long)
    out = model.train()(pyramid.scale_inputs, text, mask, labels=pyramid.bits)
    out.loss.backward()
    assert out.logits.shape == (2, 2 * (1 + 4 + 16 + 64), 8) and model.scale_embed.weight.grad[3].abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = VideoARTransformer.from_pretrained(tmp_path)
    assert reloaded.config.scale_schedule == [1, 2, 4, 8]
    torch.testing.assert_close(reloaded.scale_embed.weight, model.scale_embed.weight)
    for schedule in ([1, 2, 4, 8], [1, 2], [2, 4, 8, 16], [1, 2, 4, 4]):
        with pytest.raises(ValueError, match="scale_schedule"):
            model.extend_scale_schedule(schedule)
    assert model.config.scale_schedule == [1, 2, 4, 8] and model.scale_embed.num_embeddings == 4


@pytest.mark.parametrize("name, billions", [("L", 0.926), ("XL", 2.0), ("4B", 4.0)])
def test_presets_match_the_papers_sizes(name, billions):
    with torch.device("meta"):
        model = VideoARTransformer(VideoARConfig.from_preset(name))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.1)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'XXL'"):
        VideoARConfig.from_preset("XXL")
    assert set(VIDEOAR_PRESETS) >= {"tiny", "L", "XL", "4B"}
