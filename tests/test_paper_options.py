"""The transformer's options where the paper is read one way or another (issue 20): the loss weight of each scale,
causal or bidirectional text, the RoPE positions of coarse scales, padding-independent text, the class-conditional
model, and the longest training video. Each option is checked against its formula or a hand-made mask."""

import json

import pytest
import torch
from test_transformer import SCHEDULE, make_clip, make_model, run_cached

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.attention_mask import TEXT_BLOCK, BlockCausalRule
from videoar_hf.modeling_videoar import scale_loss_weights
from videoar_hf.rope import prefix_position_ids, video_position_ids
from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes

UCF_SCHEDULE = [1, 2, 3, 4, 6, 8]  # 6 scales on UCF-101's 8x8 latent grid (docs/method.md §1)


# loss_scale_weighting


def scale_shares(weighting: str, num_frames: int = 1) -> list[float]:
    layout = TokenLayout(num_frames, tuple(get_scale_sizes(UCF_SCHEDULE, 8, 8)))
    weights = scale_loss_weights(layout, weighting)
    return [sum(weights[layout.block_slice(t, k)].sum().item() for t in range(num_frames)) for k in range(6)]


def test_uniform_weighting_is_the_plain_mean_where_the_finest_scale_dominates():
    # areas 1, 4, 9, 16, 36, 64: 130 tokens a frame, each weighing 1 / 130
    shares = scale_shares("uniform")
    assert shares == pytest.approx([a / 130 for a in (1, 4, 9, 16, 36, 64)])
    assert shares[-1] == pytest.approx(0.492, abs=1e-3) and shares[0] == pytest.approx(0.0077, abs=1e-4)


def test_infinity_weighting_follows_its_formula():
    # Infinity: a token of scale k weighs sqrt(H_K W_K / (h_k w_k)) = 8 / s_k, normalised to sum to 1; a scale of side
    # s holds s^2 tokens, so it carries 8 s / (8 + 16 + 24 + 32 + 48 + 64) = 8 s / 192
    shares = scale_shares("infinity")
    assert shares == pytest.approx([8 * s / 192 for s in UCF_SCHEDULE])
    assert shares[-1] == pytest.approx(1 / 3) and shares[0] == pytest.approx(0.0417, abs=1e-4)
    layout = TokenLayout(1, tuple(get_scale_sizes(UCF_SCHEDULE, 8, 8)))
    weights = scale_loss_weights(layout, "infinity")
    assert weights.sum().item() == pytest.approx(1.0)  # the same total as the mean's
    assert weights[0] / weights[-1] == pytest.approx(8.0)  # sqrt(64 / 1)


def test_every_frame_carries_the_same_share():
    assert scale_shares("infinity", num_frames=3) == pytest.approx(scale_shares("infinity"))
    layout = TokenLayout(3, tuple(get_scale_sizes(UCF_SCHEDULE, 8, 8)))
    per_frame = scale_loss_weights(layout, "infinity").view(3, -1).sum(-1)
    assert per_frame.tolist() == pytest.approx([1 / 3] * 3)


def test_infinity_weighting_on_a_non_square_grid_uses_the_finest_area():
    sizes = get_scale_sizes([1, 2, 4, 8], 4, 8)  # (1, 1), (1, 2), (2, 4), (4, 8)
    weights = scale_loss_weights(TokenLayout(1, tuple(sizes)), "infinity")
    expected = torch.cat([torch.full((h * w,), (32 / (h * w)) ** 0.5) for h, w in sizes])
    torch.testing.assert_close(weights, expected / expected.sum())


# text_attention


def hand_made_rule(causal_text: bool) -> BlockCausalRule:
    """3 text tokens (the third is padding) then one frame of scales 1x1 and 2x2."""
    blocks = torch.tensor([TEXT_BLOCK] * 3 + [0] + [1] * 4)
    frames = torch.tensor([TEXT_BLOCK] * 3 + [0] * 5)
    valid = torch.tensor([[True, True, False] + [True] * 5])
    return BlockCausalRule(blocks, frames, blocks, frames, valid, causal_text=causal_text)


def test_causal_text_mask_by_hand():
    T, S = 1, 0  # readability: 1 visible, 0 hidden
    expected = torch.tensor([
        # t0 t1 pad s1 s2 s2 s2 s2
        [T, S, S, S, S, S, S, S],  # text 0 sees itself
        [T, T, S, S, S, S, S, S],  # text 1 sees text 0, 1
        [T, T, S, S, S, S, S, S],  # padding: never a key; as a query its output is dropped
        [T, T, S, T, S, S, S, S],  # scale 1 sees all real text and its block
        *[[T, T, S, T, T, T, T, T]] * 4,  # scale 2 sees the text, scale 1 and its own block
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(hand_made_rule(causal_text=True).dense()[0, 0], expected)


def test_bidirectional_text_mask_by_hand():
    T, S = 1, 0
    expected = torch.tensor([
        [T, T, S, S, S, S, S, S],  # text 0 sees the whole prompt
        [T, T, S, S, S, S, S, S],
        [T, T, S, S, S, S, S, S],
        [T, T, S, T, S, S, S, S],
        *[[T, T, S, T, T, T, T, T]] * 4,
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(hand_made_rule(causal_text=False).dense()[0, 0], expected)


def test_text_attention_changes_the_logits_and_video_still_sees_the_whole_prompt():
    pyramid, text, mask = make_clip()
    with torch.no_grad():
        causal = make_model(text_attention="causal")(pyramid.scale_inputs, text, mask).logits
        bidirectional = make_model(text_attention="bidirectional")(pyramid.scale_inputs, text, mask).logits
        # a causal prompt's last token has seen it all, so changing the first text token still changes the video
        edited = text.clone()
        edited[:, 0] += 1
        causal_edited = make_model(text_attention="causal")(pyramid.scale_inputs, edited, mask).logits
    assert not torch.allclose(causal, bidirectional)
    assert not torch.allclose(causal, causal_edited)


# rope_spatial_positions


def spatial_positions(mode: str, schedule: list[int], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Per scale, the `(h_k, w_k, 2)` (row, column) RoPE positions of one frame with no text."""
    sizes = get_scale_sizes(schedule, *grid)
    layout = TokenLayout(1, tuple(sizes))
    positions = video_position_ids(layout.token_coords(), torch.tensor([0]), sizes, mode)[0]
    return [positions[layout.block_slice(0, k), 1:].reshape(h, w, 2) for k, (h, w) in enumerate(sizes)]


def test_raw_positions_are_the_grid_indices():
    for (h, w), block in zip(get_scale_sizes([1, 3, 10], 10, 10), spatial_positions("raw", [1, 3, 10], (10, 10))):
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        assert torch.equal(block, torch.stack([rows, cols], -1).float())


def test_finest_positions_round_as_infinity_does():
    # Infinity (rope2d_normalized_by_hw=2) looks up finest-grid cell round(i * H / h), torch's round: ties to even
    blocks = spatial_positions("finest", [1, 3, 4, 10], (10, 10))
    assert blocks[0][0, 0].tolist() == [0.0, 0.0]
    assert blocks[1][:, 0, 0].tolist() == [0.0, 3.0, 7.0]  # 0, 3.33, 6.67
    assert blocks[2][:, 0, 0].tolist() == [0.0, 2.0, 5.0, 8.0]  # 0, 2.5, 5, 7.5: halves to the even neighbour
    assert blocks[3][:, 0, 0].tolist() == [float(i) for i in range(10)]
    for (h, w), block in zip(get_scale_sizes([1, 3, 4, 10], 10, 10), blocks):
        infinity = torch.stack([(torch.arange(h) * (10 / h)).reshape(h, 1).expand(h, w),
                                (torch.arange(w) * (10 / w)).reshape(1, w).expand(h, w)], -1).round()  # fmt: skip
        assert torch.equal(block, infinity)
        assert block.frac().eq(0).all(), "whole cells only"


def test_finest_positions_on_a_non_square_grid():
    sizes = get_scale_sizes([1, 2, 3, 6], 4, 6)  # (1, 1), (1, 2), (2, 3), (4, 6)
    blocks = spatial_positions("finest", [1, 2, 3, 6], (4, 6))
    assert sizes[2] == (2, 3) and blocks[2][:, :, 0][:, 0].tolist() == [0.0, 2.0]  # rows: i * 4 / 2
    assert blocks[2][0, :, 1].tolist() == [0.0, 2.0, 4.0]  # columns: i * 6 / 3
    assert blocks[1][0, :, 1].tolist() == [0.0, 3.0]


def test_centre_positions_sit_on_the_cell_centres():
    blocks = spatial_positions("centre", [1, 2, 4, 8], (8, 8))
    assert blocks[0][0, 0].tolist() == [3.5, 3.5]  # one cell: the grid's centre
    assert blocks[1][:, 0, 0].tolist() == [1.5, 5.5]  # (i + 0.5) * 4 - 0.5
    assert blocks[2][:, 0, 0].tolist() == [0.5, 2.5, 4.5, 6.5]
    assert torch.equal(blocks[3], spatial_positions("raw", [1, 2, 4, 8], (8, 8))[3]), "the finest grid is itself"
    for (h, w), block in zip(get_scale_sizes([1, 2, 4, 8], 8, 8), blocks):
        # every scale's centres average to the grid's centre
        assert block.mean((0, 1)).tolist() == pytest.approx([3.5, 3.5])


def test_positions_start_after_the_text():
    sizes = get_scale_sizes([1, 2], 2, 2)
    coords = TokenLayout(1, tuple(sizes)).token_coords()
    for mode, first in (("raw", 0.0), ("finest", 0.0), ("centre", 0.5)):
        positions = video_position_ids(coords, torch.tensor([5, 2]), sizes, mode)
        assert positions[:, 0].tolist() == [[5.0, 5 + first, 5 + first], [2.0, 2 + first, 2 + first]]


# padding-independent text


def left_padded(text: torch.Tensor, mask: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The same prompts with their padding moved to the left, and filled with other junk."""
    junk = torch.randn(text.shape, generator=torch.Generator().manual_seed(seed))
    left_text, left_mask = junk.clone(), torch.zeros_like(mask)
    for b, length in enumerate(mask.sum(-1).tolist()):
        left_text[b, text.shape[1] - length :] = text[b, :length]
        left_mask[b, text.shape[1] - length :] = 1
    return left_text, left_mask


def test_prefix_positions_count_the_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 1]])
    positions = prefix_position_ids(mask)
    assert positions.shape == (3, 5, 3) and torch.equal(positions[..., 0], positions[..., 2])
    real = [positions[b, mask[b].bool(), 0].tolist() for b in range(3)]
    assert real == [[0.0, 1.0, 2.0]] * 3


@pytest.mark.parametrize("text_attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flex_attention"])
def test_left_and_right_padding_give_the_same_logits(text_attention, implementation):
    # causal text with left padding leaves the padding queries nothing to see: no implementation may turn that into NaN
    torch.manual_seed(0)
    config = VideoARConfig.from_preset("tiny", scale_schedule=SCHEDULE, text_attention=text_attention)
    model = VideoARTransformer._from_config(config, attn_implementation=implementation).eval()
    pyramid, text, mask = make_clip()
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0], "sample 1 is right-padded"
    text_left, mask_left = left_padded(text, mask)
    with torch.no_grad():
        right = model(pyramid.scale_inputs, text, mask).logits
        left = model(pyramid.scale_inputs, text_left, mask_left).logits
        alone = model([x[1:] for x in pyramid.scale_inputs], text[1:, :4]).logits
        torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
        torch.testing.assert_close(left[1:], alone, atol=1e-5, rtol=0)
        cached_right = run_cached(model, pyramid, text, mask)
        cached_left = run_cached(model, pyramid, text_left, mask_left)
    torch.testing.assert_close(cached_left, cached_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached_left, right, atol=1e-5, rtol=0)


# class-conditional model


NUM_CLASSES = 5


def make_class_model(**overrides) -> VideoARTransformer:
    return make_model(num_classes=NUM_CLASSES, **overrides)


def test_a_class_model_has_a_class_embedding_with_a_null_row_and_no_text_projection():
    model = make_class_model()
    assert model.class_embed.weight.shape == (NUM_CLASSES + 1, 64)
    assert model.config.null_class_id == NUM_CLASSES and model.config.num_labels == NUM_CLASSES
    assert not hasattr(model, "text_proj") and not hasattr(model, "text_norm")
    assert not hasattr(make_model(), "class_embed")


def test_a_class_model_trains_and_its_cached_steps_equal_teacher_forcing():
    model = make_class_model(frame_mask_prob=0.0).train()
    pyramid, _, _ = make_clip()
    labels = torch.tensor([0, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(pyramid.scale_inputs, labels=pyramid.bits, class_labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.75 * losses[0]
    assert model.class_embed.weight.grad[[0, 3]].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        teacher_forced = model(pyramid.scale_inputs, class_labels=labels)
        cached = run_cached(model, pyramid, None, None, class_labels=labels)
    assert teacher_forced.last_hidden_state.shape[1] == 1 + teacher_forced.logits.shape[1], "a one-token prefix"
    torch.testing.assert_close(cached, teacher_forced.logits, atol=1e-5, rtol=1e-5)


def test_the_null_class_conditions_like_any_class():
    model = make_class_model()
    pyramid, _, _ = make_clip()
    null = torch.full((2,), NUM_CLASSES)
    with torch.no_grad():
        unconditional = model(pyramid.scale_inputs, class_labels=null).logits
        conditional = model(pyramid.scale_inputs, class_labels=torch.tensor([1, 1])).logits
        cached = run_cached(model, pyramid, None, None, class_labels=null)
    assert torch.isfinite(unconditional).all() and not torch.allclose(unconditional, conditional)
    torch.testing.assert_close(cached, unconditional, atol=1e-5, rtol=1e-5)


def test_conditioning_of_the_wrong_kind_is_an_error():
    pyramid, text, mask = make_clip()
    with pytest.raises(ValueError, match="class-conditional.*`class_labels`, not `text_hidden_states`"):
        make_class_model()(pyramid.scale_inputs, text, mask)
    with pytest.raises(ValueError, match="text-conditional.*`num_classes`"):
        make_model()(pyramid.scale_inputs, text, mask, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs `class_labels`"):
        make_class_model()(pyramid.scale_inputs)
    with pytest.raises(ValueError, match="needs `text_hidden_states`"):
        make_model()(pyramid.scale_inputs)
    cache = make_class_model().init_cache(4, 4)
    with pytest.raises(ValueError, match="needs `class_labels`"):
        make_class_model()(None, cache=cache)


@pytest.mark.parametrize("bad", [torch.tensor([0, NUM_CLASSES + 1]), torch.tensor([-1, 0]), torch.tensor([[0, 1]]),
                                 torch.tensor([0.0, 1.0]), [0, 1]])  # fmt: skip
def test_class_labels_out_of_range_or_malformed_are_rejected(bad):
    pyramid, _, _ = make_clip()
    with pytest.raises(ValueError, match="class_labels"):
        make_class_model()(pyramid.scale_inputs, class_labels=bad)


def test_class_names_come_from_id2label_and_must_agree_with_num_classes():
    config = VideoARConfig.from_preset("tiny", num_classes=3, id2label={0: "ApplyEyeMakeup", 1: "Archery", 2: "Biking"})
    assert config.label2id == {"ApplyEyeMakeup": 0, "Archery": 1, "Biking": 2} and config.num_labels == 3
    assert VideoARConfig(num_classes=2).id2label == {0: "LABEL_0", 1: "LABEL_1"}
    with pytest.raises(Exception, match="id2label"):
        VideoARConfig(num_classes=3, id2label={0: "a", 1: "b"})
    with pytest.raises(Exception, match="num_classes"):
        VideoARConfig(num_classes=0)


def test_a_class_model_saves_and_reloads(tmp_path):
    model = make_class_model()
    pyramid, _, _ = make_clip()
    labels = torch.tensor([2, NUM_CLASSES])
    model.save_pretrained(tmp_path)
    reloaded = VideoARTransformer.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_classes == NUM_CLASSES and reloaded.config.id2label == model.config.id2label
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pyramid.scale_inputs, class_labels=labels).logits,
                                   model(pyramid.scale_inputs, class_labels=labels).logits, atol=0, rtol=0)  # fmt: skip


# max_latent_frames, and every new field's defaults and serialisation


def test_max_latent_frames_is_validated():
    assert VideoARConfig().max_latent_frames is None
    assert VideoARConfig(max_latent_frames=5).max_latent_frames == 5
    for bad in (0, -3):
        with pytest.raises(Exception, match="max_latent_frames"):
            VideoARConfig(max_latent_frames=bad)


@pytest.mark.parametrize("field, bad", [("text_attention", "full"), ("loss_scale_weighting", "sqrt"),
                                        ("rope_spatial_positions", "center")])  # fmt: skip
def test_choices_name_the_field_and_what_is_allowed(field, bad):
    with pytest.raises(Exception, match=f"`{field}` must be one of"):
        VideoARConfig(**{field: bad})


def test_defaults():
    config = VideoARConfig()
    assert (config.text_attention, config.loss_scale_weighting, config.rope_spatial_positions) == (
        "causal", "infinity", "raw"
    )
    assert config.num_classes is None and config.max_latent_frames is None and config.null_class_id is None


NEW_FIELDS = dict(text_attention="bidirectional", loss_scale_weighting="uniform", rope_spatial_positions="centre",
                  num_classes=7, max_latent_frames=12)  # fmt: skip


def test_new_fields_round_trip(tmp_path):
    config = VideoARConfig.from_preset("tiny", **NEW_FIELDS)
    for reloaded in (VideoARConfig.from_dict(config.to_dict()),
                     VideoARConfig.from_dict(json.loads(config.to_json_string()))):  # fmt: skip
        assert {field: getattr(reloaded, field) for field in NEW_FIELDS} == NEW_FIELDS
        assert reloaded.id2label == config.id2label
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {field: saved[field] for field in NEW_FIELDS} == NEW_FIELDS
    reloaded = VideoARConfig.from_pretrained(tmp_path)
    assert {field: getattr(reloaded, field) for field in NEW_FIELDS} == NEW_FIELDS
    assert reloaded.to_dict() == {**config.to_dict(), "transformers_version": reloaded.transformers_version}


def test_defaults_round_trip_and_overrides_win(tmp_path):
    VideoARConfig.from_preset("tiny").save_pretrained(tmp_path)
    reloaded = VideoARConfig.from_pretrained(tmp_path)
    assert (reloaded.text_attention, reloaded.loss_scale_weighting) == ("causal", "infinity")
    overridden = VideoARConfig.from_pretrained(tmp_path, text_attention="bidirectional")
    assert overridden.text_attention == "bidirectional"


def test_a_config_saved_before_the_fields_keeps_the_behaviour_it_was_trained_with(tmp_path):
    saved = VideoARConfig.from_preset("tiny").to_dict()
    for field in ("text_attention", "loss_scale_weighting", "num_classes", "max_latent_frames"):
        del saved[field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = VideoARConfig.from_pretrained(tmp_path)
    assert (old.text_attention, old.loss_scale_weighting) == ("bidirectional", "uniform")
    assert old.num_classes is None and old.max_latent_frames is None
    assert VideoARConfig.from_pretrained(tmp_path, text_attention="causal").text_attention == "causal"
