"""The Shapes synthetic text-to-video dataset: rendering, ground truth, captions, held-out triples, Hub format."""

import numpy as np
import pytest
import torch

from videoar_hf.shapes import (
    CAPTION_TEMPLATES,
    COLOURS,
    HELD_OUT_TRIPLES,
    MOTIONS,
    SHAPES,
    ShapesDataset,
    Triple,
    all_triples,
    caption_for,
    render_clip,
    sample_clip,
    shape_mask,
    training_triples,
)

# (resolution, num_frames) of the default stage and of a curriculum stage; speeds scale with resolution / 64
STAGES = [(64, 17), (32, 9)]
SPEEDS = {64: (1.0, 2.0), 32: (0.5, 1.0)}
STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def every_kind_of_clip(resolution, num_frames, count=60):
    dataset = ShapesDataset(count, seed=1, triples=all_triples(), num_frames=num_frames, resolution=resolution)
    return [dataset.clip(i) for i in range(count)]


def is_connected(mask):
    """Grow a region from one pixel of `mask` through 4-neighbours; connected if it reaches all of `mask`."""
    region = np.zeros_like(mask)
    region[tuple(np.argwhere(mask)[0])] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if (grown == region).all():
            return (region == mask).all()
        region = grown


def centroids(masks):
    """`(T, 2)` mean (x, y) pixel position of each frame's mask."""
    return np.array([np.argwhere(mask)[:, ::-1].mean(axis=0) for mask in masks])


def test_items_depend_only_on_seed_and_index():
    dataset = ShapesDataset(4, seed=3)
    first, again = dataset.clip(1), ShapesDataset(4, seed=3).clip(1)
    assert np.array_equal(first.video, again.video) and first.caption == again.caption
    assert np.array_equal(first.centres, again.centres)
    assert not np.array_equal(first.video, dataset.clip(2).video)
    assert not np.array_equal(first.video, ShapesDataset(4, seed=4).clip(1).video)
    assert np.array_equal(dataset.clip(-1).video, dataset.clip(3).video)
    with pytest.raises(IndexError):
        dataset.clip(4)


def test_items_are_model_facing_tensors():
    dataset = ShapesDataset(2)
    item, clip = dataset[0], dataset.clip(0)
    assert item["video"].dtype == torch.float32 and item["video"].shape == (3, 17, 64, 64)
    assert item["video"].min() == -1 and item["video"].max() <= 1
    torch.testing.assert_close(item["video"], torch.from_numpy(clip.video).permute(3, 0, 1, 2) / 127.5 - 1)
    assert (item["text"], item["colour"], item["shape"], item["motion"]) == (clip.caption, *clip.triple)
    assert clip.video.dtype == np.uint8 and clip.video.shape == (17, 64, 64, 3)
    assert clip.centres.shape == (17, 2) and clip.masks.shape == (17, 64, 64) and clip.masks.dtype == bool
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["video"].shape == (2, 3, 17, 64, 64) and len(batch["text"]) == 2


@pytest.mark.parametrize("resolution, num_frames", STAGES)
def test_one_whole_object_of_exact_colour_on_black(resolution, num_frames):
    for clip in every_kind_of_clip(resolution, num_frames):
        footprint = shape_mask(clip.shape, clip.size)
        # masks are the non-black pixels, so this leaves exactly two colours: the palette's and black
        assert (clip.video[clip.masks] == COLOURS[clip.colour]).all()
        for mask in clip.masks:
            # exactly the whole footprint in every frame: nothing else drawn, nothing cut off by the frame's edge
            assert mask.sum() == footprint.sum()
            rows, cols = np.nonzero(mask)
            assert np.array_equal(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], footprint)


@pytest.mark.parametrize("resolution, num_frames", STAGES)
def test_object_moves_along_its_motion_at_its_speed(resolution, num_frames):
    for clip in every_kind_of_clip(resolution, num_frames):
        steps = np.diff(centroids(clip.masks), axis=0)
        np.testing.assert_allclose(steps, np.diff(clip.centres, axis=0), err_msg="centres move with the pixels")
        along, across = np.round(steps @ STEP[clip.motion], 6), steps @ STEP[clip.motion][::-1]
        np.testing.assert_allclose(across, 0, atol=1e-6, err_msg="one axis only")
        assert SPEEDS[resolution][0] <= clip.speed <= SPEEDS[resolution][1]
        # drawn at rounded positions: every step is the speed rounded down or up, and on average the speed
        assert set(along) <= {np.floor(clip.speed), np.ceil(clip.speed)}
        assert along.mean() == pytest.approx(clip.speed, abs=1 / (num_frames - 1))


def test_sizes_cover_the_range_and_scale_with_resolution():
    rng = np.random.default_rng(0)
    sizes = [sample_clip(rng).size for _ in range(200)]
    assert min(sizes) == 10 and max(sizes) == 18
    sizes = [sample_clip(rng, num_frames=9, resolution=32).size for _ in range(100)]
    assert min(sizes) == 5 and max(sizes) == 9


def test_render_clip_draws_at_rounded_positions():
    clip = render_clip("red", "square", "right", size=10, speed=1.5, start=(10.5, 20.5), num_frames=3)
    assert clip.caption == "a red square moving right"
    # centre x 10.5, 12.0, 13.5 puts the left edge at 6, 7.5 -> 8, 9
    assert np.array_equal(clip.centres, [[10.5, 20.5], [12.5, 20.5], [13.5, 20.5]])
    expected = np.zeros_like(clip.video)
    for frame, left in zip(expected, (6, 8, 9)):
        frame[16:26, left : left + 10] = (255, 0, 0)
    assert np.array_equal(clip.video, expected)


def test_shape_footprints_are_one_piece_filling_their_box():
    for shape in SHAPES:
        for size in range(1, 19):
            footprint = shape_mask(shape, size)
            assert footprint.shape == (size, size) and footprint.any(axis=0).all() and footprint.any(axis=1).all()
            assert is_connected(footprint)
            assert np.array_equal(footprint, footprint[:, ::-1]), "symmetric left to right"
    assert not shape_mask("circle", 10)[0, 0] and not shape_mask("triangle", 10)[0, 0]


def test_captions_vary_and_name_the_triple():
    assert len(CAPTION_TEMPLATES) >= 5
    rng = np.random.default_rng(0)
    for triple in all_triples():
        captions = {caption_for(*triple, rng) for _ in range(60)}
        assert len(captions) >= 5
        assert all(triple.colour in caption for caption in captions)
    # one draw of the wording tells every triple apart
    for seed in range(10):
        assert len({caption_for(*triple, np.random.default_rng(seed)) for triple in all_triples()}) == 60


def test_held_out_triples_stay_out_of_training_unless_asked_for():
    assert len(HELD_OUT_TRIPLES) == 5 and set(HELD_OUT_TRIPLES) <= set(all_triples())
    assert len(all_triples()) == 60 and set(training_triples()) == set(all_triples()) - set(HELD_OUT_TRIPLES)
    training = ShapesDataset(300)
    assert not {training.clip(i).triple for i in range(300)} & set(HELD_OUT_TRIPLES)
    held_out = ShapesDataset(50, triples=HELD_OUT_TRIPLES)
    assert {held_out.clip(i).triple for i in range(50)} == set(HELD_OUT_TRIPLES)
    everything = ShapesDataset(2, held_out=())
    assert set(everything.triples) == set(all_triples())


def test_palette_extends_with_new_colours():
    colours = {**COLOURS, "orange": (255, 128, 0)}
    orange = [triple for triple in all_triples(colours) if triple.colour == "orange"]
    dataset = ShapesDataset(10, triples=orange, colours=colours)
    for clip in map(dataset.clip, range(10)):
        assert clip.colour == "orange" and "orange" in clip.caption
        assert (clip.video[clip.masks] == (255, 128, 0)).all()
    with pytest.raises(ValueError, match="colour"):
        ShapesDataset(10, triples=orange)


def test_hf_dataset_round_trips_the_clips(tmp_path):
    import datasets

    triples = [*HELD_OUT_TRIPLES, *training_triples()]
    dataset = ShapesDataset(8, seed=5, triples=triples)
    dataset.to_hf_dataset().save_to_disk(tmp_path)
    rows = datasets.load_from_disk(tmp_path).with_format("numpy", columns=["video"], dtype=np.uint8)
    assert rows.num_rows == 8
    for i, row in enumerate(rows.with_format(None)):
        clip = dataset.clip(i)
        assert np.array_equal(rows[i]["video"], clip.video) and rows[i]["video"].dtype == np.uint8
        assert (row["text"], row["colour"], row["shape"], row["motion"]) == (clip.caption, *clip.triple)
        assert row["held_out"] == (clip.triple in HELD_OUT_TRIPLES)


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: ShapesDataset(0), "num_clips"),
        (lambda: ShapesDataset(2, num_frames=0), "num_frames"),
        (lambda: ShapesDataset(2, num_frames=30), "resolution=64 is too small for num_frames=30"),
        (lambda: ShapesDataset(2, resolution=0), "resolution"),
        (lambda: ShapesDataset(2, triples=[("purple", "circle", "left")]), "triples: colour"),
        (lambda: ShapesDataset(2, triples=[("red", "hexagon", "left")]), "triples: shape"),
        (lambda: ShapesDataset(2, triples=[("red", "circle", "diagonal")]), "triples: motion"),
        (lambda: ShapesDataset(2, held_out=[("red", "circle", "sideways")]), "held_out: motion"),
        (lambda: ShapesDataset(2, held_out=all_triples()), "triples must not be empty"),
        (lambda: ShapesDataset(2, colours={"black": (0, 0, 0)}, held_out=()), "colours"),
        (lambda: sample_clip(np.random.default_rng(0), triples=[]), "triples"),
        (lambda: render_clip("red", "circle", "left", size=10, speed=2, start=(20, 30)), "start"),
        (lambda: render_clip("red", "circle", "left", size=0, speed=2, start=(40, 30)), "size"),
        (lambda: render_clip("red", "circle", "left", size=10, speed=0, start=(40, 30)), "speed"),
        (lambda: render_clip("pink", "circle", "left", size=10, speed=1, start=(40, 30)), "colour"),
    ],
)
def test_bad_arguments_name_the_parameter(make, parameter):
    with pytest.raises(ValueError, match=parameter):
        make()


def test_constants_follow_the_spec():
    assert MOTIONS == ("left", "right", "up", "down") and SHAPES == ("circle", "square", "triangle")
    assert HELD_OUT_TRIPLES == (
        ("green", "triangle", "up"),
        ("blue", "circle", "left"),
        ("yellow", "square", "down"),
        ("white", "triangle", "right"),
        ("red", "square", "up"),
    )
    assert all(isinstance(triple, Triple) for triple in HELD_OUT_TRIPLES)
    assert COLOURS == {
        "red": (255, 0, 0),
        "green": (0, 255, 0),
        "blue": (0, 0, 255),
        "yellow": (255, 255, 0),
        "white": (255, 255, 255),
    }


def test_bouncing_clips_of_any_length_stay_inside_and_reflect_off_the_edges():
    from videoar_hf.shapes import ShapesDataset, render_clip

    clip = render_clip("red", "square", "right", size=10, speed=2.0, start=(50.5, 20.5), num_frames=129, resolution=64,
                       bounce=True)  # fmt: skip
    xs = clip.centres[:, 0]
    assert clip.masks.any(axis=(1, 2)).all(), "the object is in every frame"
    assert xs.min() >= 4.5 and xs.max() <= 64 - 5.5, "inside the frame"
    steps = np.diff(xs)
    assert steps[0] > 0 and (steps < 0).any() and (steps > 0)[-20:].any(), "right first, then back, then right again"
    assert (clip.centres[:, 1] == clip.centres[0, 1]).all()
    dataset = ShapesDataset(8, num_frames=129, resolution=64, bounce=True)
    assert dataset[3]["video"].shape == (3, 129, 64, 64)
    assert all(dataset.clip(i).triple not in dataset.held_out for i in range(8))
    with pytest.raises(ValueError, match="too small"):
        ShapesDataset(8, num_frames=129, resolution=64)  # without bouncing the path cannot fit


def test_a_bouncing_clip_first_travels_its_caption_s_direction_for_a_plain_clip_s_length():
    # so a 17-frame video of a bouncing model shows the direction the prompt names
    from videoar_hf.shapes import _DIRECTIONS, FIRST_LEG_FRAMES, ShapesDataset

    dataset = ShapesDataset(64, num_frames=65, resolution=64, bounce=True, seed=3)
    for i in range(64):
        clip = dataset.clip(i)
        progress = np.diff(clip.centres[:FIRST_LEG_FRAMES], axis=0) @ np.array(_DIRECTIONS[clip.motion])
        assert (progress > 0).all(), (i, clip.motion, progress)


def test_a_mid_path_clip_continues_its_object_s_path_under_the_first_caption():
    # a long generation's later windows start mid-path, under the prompt that named the path's first direction
    from videoar_hf.shapes import MAX_START_FRAME, ShapesDataset, render_clip

    whole = render_clip("red", "square", "left", size=12, speed=1.5, start=(40.5, 30.5), num_frames=129, bounce=True)
    later = render_clip("red", "square", "left", size=12, speed=1.5, start=(40.5, 30.5), num_frames=65, bounce=True,
                        start_frame=50)  # fmt: skip
    assert np.array_equal(later.video, whole.video[50:115]) and np.array_equal(later.centres, whole.centres[50:115])
    assert (later.start_frame, later.motion, later.caption) == (50, "left", whole.caption)
    with pytest.raises(ValueError, match="start_frame must be >= 0, and 0 unless bounce=True"):
        render_clip("red", "square", "left", size=12, speed=1.5, start=(40.5, 30.5), start_frame=3)

    plain = ShapesDataset(64, num_frames=33, bounce=True, seed=7)
    mixed = ShapesDataset(64, num_frames=33, bounce=True, seed=7, mid_path_share=0.5)
    starts = np.array([mixed.clip(i).start_frame for i in range(64)])
    assert 16 <= (starts > 0).sum() <= 48 and starts.max() <= MAX_START_FRAME
    assert [mixed[i]["continues"] for i in range(64)] == list(starts > 0)
    for i in np.flatnonzero(starts == 0):
        assert np.array_equal(mixed.clip(i).video, plain.clip(i).video), "the share leaves the other clips as they were"
    i = int(np.flatnonzero(starts)[0])
    assert mixed.clip(i).triple == plain.clip(i).triple and mixed.clip(i).caption == plain.clip(i).caption
    for bad in ({"mid_path_share": 1.5, "bounce": True}, {"mid_path_share": 0.5}):
        with pytest.raises(ValueError, match="mid_path_share must be in"):
            ShapesDataset(8, num_frames=17, **bad)


def test_after_turn_clips_turn_at_the_end_of_the_given_context():
    # the frames a continuation predicts first then follow a turn, where long videos lost the object's speed
    from videoar_hf.shapes import AFTER_TURN_FRAMES, MAX_START_FRAME, ShapesDataset, turn_frames

    assert list(turn_frames(np.array([0.0, 1, 2, 3, 2, 1, 2]))) == [3, 5]
    whole_paths = ShapesDataset(64, num_frames=MAX_START_FRAME + 33, bounce=True, seed=7)
    mid_path = ShapesDataset(64, num_frames=33, bounce=True, seed=7, mid_path_share=0.5)
    after_turn = ShapesDataset(64, num_frames=33, bounce=True, seed=7, mid_path_share=0.5, after_turn_share=0.5)
    moved = 0
    for i in range(64):
        clip, before = after_turn.clip(i), mid_path.clip(i)
        if clip.start_frame == before.start_frame:
            assert np.array_equal(clip.video, before.video), "the share leaves the other clips as they were"
            continue
        moved += 1
        assert before.start_frame > 0, "only mid-path clips move their start"
        assert set(turn_frames(clip.centres[:, clip.axis])) & set(AFTER_TURN_FRAMES), i
        assert clip.triple == before.triple and clip.caption == before.caption
        shown = slice(clip.start_frame, clip.start_frame + 33)
        assert np.array_equal(whole_paths.clip(i).video[shown], clip.video), "the object's path, from a later frame"
        assert after_turn[i]["continues"] and after_turn[i]["video"].shape == (3, 33, 64, 64)
    assert 6 <= moved <= 26
    for bad in ({"after_turn_share": 1.5, "mid_path_share": 0.5}, {"after_turn_share": 0.5}):
        with pytest.raises(ValueError, match="after_turn_share must be in"):
            ShapesDataset(8, num_frames=17, bounce=True, **bad)
