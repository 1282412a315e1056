"""Shapes evaluation: frame analysis against the dataset's ground truth, scoring, suites, PSNR and the report."""

import json
import math
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from videoar_hf.evaluation import (
    HELD_OUT_SEED_START,
    MAX_PSNR,
    TARGETS,
    analyse_clip,
    classify_shape,
    continuation_suite,
    evaluate_pipeline,
    held_out_suite,
    label_components,
    long_suite,
    paraphrase_suite,
    score_frames,
    motion_direction,
    nearest_colour,
    new_colour_suite,
    prompt_for,
    reconstruct_clip,
    reference_clip,
    run_evaluation,
    score_clip,
    tokenizer_psnr,
    train_suite,
)
from videoar_hf.shapes import (
    COLOURS,
    HELD_OUT_TRIPLES,
    SHAPES,
    ShapesDataset,
    Triple,
    all_triples,
    render_clip,
    shape_mask,
    training_triples,
)
from videoar_hf.testing_utils import tiny_pipeline

ORANGE_PALETTE = {**COLOURS, "orange": (255, 128, 0)}


def red_circle_moving_left(**overrides):
    options = dict(size=12, speed=1.5, start=(44.0, 30.0), num_frames=17, resolution=64)
    return render_clip("red", "circle", "left", **{**options, **overrides})


@pytest.fixture(scope="module")
def pipe64():
    return tiny_pipeline(sample_size=64, scale_schedule=(1, 2, 4, 8))


# ---------------------------------------------------------------- real clips read back exactly


@pytest.mark.parametrize("resolution, num_frames", [(64, 17), (32, 9)])
def test_real_clips_are_read_back_exactly(resolution, num_frames):
    dataset = ShapesDataset(60, seed=11, triples=all_triples(), num_frames=num_frames, resolution=resolution)
    for index in range(len(dataset)):
        clip = dataset.clip(index)
        analysis = analyse_clip(clip.video)
        assert score_clip(analysis, clip.triple) == {"colour": True, "shape": True, "motion": True}, clip.triple
        assert analysis.one_object_share == 1.0
        assert analysis.area_spread == pytest.approx(0.0, abs=1e-9)
        assert analysis.colour_consistency == 1.0
        assert np.array_equal(np.stack([frame.mask for frame in analysis.frames]), clip.masks)


def test_float_frames_read_like_uint8():
    clip = red_circle_moving_left()
    assert analyse_clip(clip.video / 255.0).summary() == analyse_clip(clip.video).summary()


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_are_classified_down_to_their_smallest_distinct_size(shape):
    smallest = {"square": 1, "triangle": 3, "circle": 4}[shape]
    for size in range(smallest, 19):
        assert classify_shape(shape_mask(shape, size)) == shape, size
    # below that, Shapes draws a circle or triangle as a full block
    if smallest > 1:
        assert classify_shape(shape_mask(shape, smallest - 1)) == "square"


def test_orange_is_recognised_in_an_extended_palette():
    clip = render_clip("orange", "square", "up", size=10, speed=1.0, start=(30.0, 40.0), colours=ORANGE_PALETTE)
    assert analyse_clip(clip.video, palette=ORANGE_PALETTE).colour == "orange"
    assert analyse_clip(clip.video).colour is None  # the default palette has no orange to match


@pytest.mark.parametrize(
    "rgb, expected",
    [
        ((0.45, 0.02, 0.0), "red"),  # dim, but plainly red
        ((0.95, 0.9, 1.0), "white"),
        ((1.0, 0.55, 0.05), "orange"),
        ((0.55, 0.50, 0.36), None),  # the muddy grey-brown a bad decoder draws: nearest to orange, but not orange
        ((0.50, 0.60, 0.31), None),  # olive
        ((1.0, 0.5, 0.5), None),  # pink
    ],
)
def test_colours_are_named_only_near_a_palette_colour(rgb, expected):
    assert nearest_colour(np.array(rgb), ORANGE_PALETTE) == expected


# ---------------------------------------------------------------- wrong clips score low


@pytest.mark.parametrize(
    "label, expected",
    [
        (Triple("blue", "circle", "left"), {"colour": False, "shape": True, "motion": True}),
        (Triple("red", "triangle", "left"), {"colour": True, "shape": False, "motion": True}),
        (Triple("red", "circle", "down"), {"colour": True, "shape": True, "motion": False}),
    ],
)
def test_a_clip_fails_exactly_the_attribute_its_label_gets_wrong(label, expected):
    assert score_clip(analyse_clip(red_circle_moving_left().video), label) == expected


def test_an_all_black_clip_has_no_object():
    analysis = analyse_clip(np.zeros((17, 64, 64, 3), np.uint8))
    assert (analysis.colour, analysis.shape, analysis.motion) == (None, None, "none")
    assert analysis.one_object_share == 0.0
    assert analysis.area_spread is None and analysis.colour_consistency is None
    assert score_clip(analysis, Triple("red", "circle", "left")) == {"colour": False, "shape": False, "motion": False}


def test_two_objects_are_flagged():
    other = render_clip("green", "square", "right", size=10, speed=1.0, start=(10.0, 8.0))
    analysis = analyse_clip(np.maximum(red_circle_moving_left().video, other.video))
    assert [frame.num_objects for frame in analysis.frames] == [2] * 17
    assert analysis.one_object_share == 0.0


def test_specks_below_the_minimum_area_are_not_objects():
    video = red_circle_moving_left().video.copy()
    video[:, 60:62, 1:3] = 255  # a 2x2 white speck in every frame
    assert analyse_clip(video).one_object_share == 1.0


def test_a_static_object_does_not_move():
    first_frame = red_circle_moving_left().video[:1]
    assert analyse_clip(np.repeat(first_frame, 17, axis=0)).motion == "none"


def test_an_object_that_vanishes_has_spread_area():
    video = red_circle_moving_left().video.copy()
    video[::2] = 0
    analysis = analyse_clip(video)
    assert analysis.one_object_share == pytest.approx(8 / 17)
    assert analysis.area_spread == pytest.approx(0.0, abs=1e-9)  # over the frames that show it
    shrunk = red_circle_moving_left().video.copy()
    shrunk[8:] = render_clip("red", "circle", "left", size=6, speed=1.5, start=(44.0, 30.0)).video[8:]
    assert analyse_clip(shrunk).area_spread > 0.3


@pytest.mark.parametrize(
    "step, expected", [((1.0, 0.0), "right"), ((-1.0, 0.0), "left"), ((0.0, 1.0), "down"), ((0.0, -1.0), "up")]
)
def test_motion_direction_follows_image_axes(step, expected):
    times = np.arange(17)
    centroids = np.array([32.0, 32.0]) + times[:, None] * np.array(step)
    assert motion_direction(times, centroids, (64, 64)) == expected
    assert motion_direction(times, centroids * 0.1 + 30, (64, 64)) == "none"  # 1.6 px of travel


def test_components_are_8_connected_and_separate_per_frame():
    mask = np.zeros((2, 6, 6), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one component
    mask[0, 4:, 4:] = True
    mask[1, 0, 0] = True  # same place in the next frame: its own component
    labels = label_components(mask)
    assert len(np.unique(labels[0][labels[0] >= 0])) == 2
    assert labels[0, 0, 0] == labels[0, 1, 1] != labels[1, 0, 0]
    assert (labels[~mask] == -1).all()


# ---------------------------------------------------------------- suites


def test_suites_have_the_standard_sizes_and_unseen_seeds():
    train, held_out, continuation = train_suite(), held_out_suite(), continuation_suite()
    assert len(train.triples) == len(held_out.triples) == len(continuation.triples) == 100
    assert set(train.triples) == set(continuation.triples) == set(training_triples())
    assert set(held_out.triples) == set(HELD_OUT_TRIPLES) and held_out.seeds[0] == HELD_OUT_SEED_START
    seeds = train.seeds + held_out.seeds + continuation.seeds
    assert len(set(seeds)) == 300 and min(seeds) >= 10_000
    assert continuation.continuation and not train.continuation


# ---------------------------------------------------------------- generating with a pipeline


class RecordingPipeline:
    """Forwards to a pipeline and keeps each call's prompts and options."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, prompts, **options):
        self.calls.append((prompts, options))
        return self.pipe(prompts, **options)


def test_evaluate_pipeline_batches_seeded_cases(pipe64):
    suite = train_suite(3)
    recording = RecordingPipeline(pipe64)
    result = evaluate_pipeline(
        recording, triples=suite.triples, seeds=suite.seeds, num_frames=5, batch_size=2, progress=False, keep_videos=1
    )
    assert [len(prompts) for prompts, _ in recording.calls] == [2, 1]
    expected_prompts = [prompt_for(*case) for case in suite.cases]
    assert [record["prompt"] for record in result["samples"]] == expected_prompts
    assert "guidance_scale" not in recording.calls[0][1]  # None keeps the pipeline's default
    metric_names = {"num_samples", "colour", "shape", "motion", "one_object", "area_spread", "colour_consistency",
                    "colour_kept", "shape_kept", "bounce", "first_error_frame"}  # fmt: skip
    assert set(result["metrics"]) == metric_names
    assert result["metrics"]["num_samples"] == 3
    assert result["videos"][0]["frames"].shape == (5, 64, 64, 3) and result["videos"][0]["frames"].dtype == np.uint8
    again = evaluate_pipeline(
        pipe64, triples=suite.triples, seeds=suite.seeds, num_frames=5, batch_size=2, progress=False
    )
    assert again["samples"] == result["samples"]  # fixed seeds: the same videos


def test_continuation_starts_from_the_reference_first_frame(pipe64):
    triple, seed = Triple("green", "square", "right"), 30_000
    recording = RecordingPipeline(pipe64)
    result = evaluate_pipeline(
        recording, triples=[triple], seeds=[seed], num_frames=5, continuation=True, guidance_scale=2.0, progress=False
    )
    reference = reference_clip(triple, seed, num_frames=5)
    prompts, options = recording.calls[0]
    assert prompts == [reference.caption] and options["guidance_scale"] == 2.0
    np.testing.assert_allclose(options["image"][0], reference.video[0] / 255, atol=1e-6)
    assert result["samples"][0]["target"] == triple._asdict()


def test_the_kept_videos_are_the_first_of_each_shape(pipe64):
    suite = held_out_suite(1)  # (green, triangle), (blue, circle), (yellow, square), (white, triangle), (red, square)
    result = evaluate_pipeline(pipe64, triples=suite.triples, seeds=suite.seeds, num_frames=1, progress=False, keep_videos=3)
    assert [video["shape"] for video in result["videos"]] == ["triangle", "circle", "square"]
    assert [video["prompt"] for video in result["videos"]] == [prompt_for(*case) for case in suite.cases[:3]]


def test_run_evaluation_writes_the_report(pipe64, tmp_path):
    report = run_evaluation(
        pipe64, tmp_path, num_prompts=2, seeds_per_held_out=1, num_frames=5, long_prompts=1, long_num_frames=37,
        resolution=64, progress=False,
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == report
    assert list(written["suites"]) == ["train", "held_out", "continuation", "tokenizer", "paraphrases", "long"]
    lengths = [len(written["suites"][name]["samples"]) for name in ("train", "held_out", "continuation", "paraphrases", "long")]
    assert lengths == [2, 5, 2, 2, 1]
    assert math.isfinite(written["suites"]["tokenizer"]["metrics"]["psnr"])
    table = (tmp_path / "metrics.md").read_text()
    assert ("| suite | cases | colour % | shape % | motion % | one object % | tokenizer PSNR dB | colour kept % | "
            "shape kept % | bounce % | first error frame | result |") in table
    for name in written["suites"]:
        assert f"| {name} |" in table
    assert "FAIL" in table and "| report |" in table  # random weights; paraphrases have no target
    grid = PIL.Image.open(tmp_path / "samples.png")
    # the first video of each shape: the held-out suite's 3, one circle from each other suite; the 37-frame one shows
    # every 3rd frame, 13 columns
    assert grid.width > 13 * 128 and 7 * 128 < grid.height < 8 * 128 + 100
    strip = PIL.Image.open(tmp_path / "long_video.png")  # 37 frames, 16 to a row
    assert strip.width > 16 * 128 and strip.height > 3 * 128


class PerfectPipeline:
    """Returns the real Shapes clip of each prompt's triple (bouncing, `long_num_frames` long, for `long_cases`), and
    reconstructs videos exactly."""

    def __init__(self, cases, palette=COLOURS, paraphrase_cases=(), long_cases=(), long_num_frames=65):
        self.clips = {prompt_for(*case): reference_clip(*case, palette=palette) for case in cases}
        self.clips.update({reference_clip(*case, palette=palette).caption: reference_clip(*case, palette=palette) for case in cases})
        self.clips.update({prompt_for(*case, paraphrase=True): reference_clip(*case) for case in paraphrase_cases})
        self.clips.update({prompt_for(*case): reference_clip(*case, num_frames=long_num_frames, bounce=True) for case in long_cases})
        self.video_tokenizer = IdentityTokenizer()

    def __call__(self, prompts, **options):
        return SimpleNamespace(frames=np.stack([self.clips[prompt].video / 255 for prompt in prompts]))


def test_a_perfect_pipeline_passes_every_target(tmp_path):
    suites = [train_suite(4), held_out_suite(1), continuation_suite(4)]
    cases = [case for suite in suites for case in suite.cases]
    pipe = PerfectPipeline(cases, paraphrase_cases=paraphrase_suite(4).cases, long_cases=long_suite(3).cases)
    report = run_evaluation(pipe, tmp_path, num_prompts=4, seeds_per_held_out=1, long_prompts=3, long_num_frames=65,
                            progress=False)  # fmt: skip
    assert all(result["passed"] for result in report["suites"].values())
    assert report["suites"]["train"]["metrics"]["colour"] == 1.0
    assert report["suites"]["paraphrases"]["metrics"]["shape"] == 1.0
    long = report["suites"]["long"]["metrics"]
    assert long["colour_kept"] == long["shape_kept"] == long["bounce"] == long["one_object"] == 1.0
    assert long["first_error_frame"] == 65
    assert report["suites"]["tokenizer"]["metrics"]["psnr"] == MAX_PSNR
    table = (tmp_path / "metrics.md").read_text()
    assert table.count("PASS") == 5 and table.count("| report |") == 1
    assert "100.0 (≥ 95)" in table and "| 65.00 | PASS |" in table and long["motion"] is None


def test_unknown_suites_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Unknown suites"):
        run_evaluation(PerfectPipeline([]), tmp_path, suites=("train", "speed"))


ORANGE = {"orange": (255, 128, 0)}


def test_new_colours_are_prompted_and_named_in_every_suite(tmp_path):
    cases = new_colour_suite(["orange"], 4).cases + train_suite(4).cases
    report = run_evaluation(PerfectPipeline(cases, {**COLOURS, **ORANGE}), tmp_path, suites=["train", "new_colours"],
                            new_colours=ORANGE, num_prompts=4, progress=False)  # fmt: skip
    new = report["suites"]["new_colours"]
    assert new["passed"] and new["metrics"]["colour"] == 1.0
    assert all("orange" in sample["prompt"] for sample in new["samples"])
    assert report["suites"]["train"]["metrics"]["colour"] == 1.0
    assert "| new_colours | 4 |" in (tmp_path / "metrics.md").read_text()


def test_a_model_that_draws_red_for_orange_fails_the_new_colours(tmp_path):
    pipe = PerfectPipeline(train_suite(12 * 5).cases)
    for triple, seed in new_colour_suite(["orange"], 4).cases:
        pipe.clips[prompt_for(triple, seed)] = reference_clip(triple._replace(colour="red"), seed)
    report = run_evaluation(pipe, tmp_path, new_colours=ORANGE, suites=["new_colours"], num_prompts=4, progress=False)
    assert report["suites"]["new_colours"]["metrics"]["colour"] == 0.0
    assert report["suites"]["new_colours"]["metrics"]["motion"] == 1.0 and not report["suites"]["new_colours"]["passed"]


def test_new_colours_run_by_default_and_are_checked(tmp_path):
    suite = new_colour_suite(["orange"], 2)
    pipe = PerfectPipeline(suite.cases + train_suite(2).cases + held_out_suite(1).cases + continuation_suite(2).cases,
                           {**COLOURS, **ORANGE}, paraphrase_suite(2).cases, long_suite(1).cases, 21)  # fmt: skip
    report = run_evaluation(pipe, tmp_path, new_colours=ORANGE, num_prompts=2, seeds_per_held_out=1, long_prompts=1,
                            long_num_frames=21, progress=False)  # fmt: skip
    assert list(report["suites"]) == ["train", "held_out", "continuation", "tokenizer", "paraphrases", "long", "new_colours"]
    with pytest.raises(ValueError, match="'new_colours' suite needs `new_colours`"):
        run_evaluation(pipe, tmp_path, suites=["new_colours"])
    with pytest.raises(ValueError, match=r"\['red'\] are already Shapes colours"):
        run_evaluation(pipe, tmp_path, new_colours={"red": (200, 0, 0)})


# ---------------------------------------------------------------- tokenizer PSNR


class IdentityTokenizer:
    """encode -> quantize -> decode that returns the video plus `offset` (in [-1, 1] units)."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def encode(self, video):
        return SimpleNamespace(latents=video)

    def quantize(self, latents):
        return SimpleNamespace(features=latents)

    def decode(self, features):
        return SimpleNamespace(sample=features + self.offset)


def test_tokenizer_psnr_matches_a_hand_computation():
    clips = [red_circle_moving_left(num_frames=5).video, np.full((5, 64, 64, 3), 128, np.uint8)]
    # decoded 0.1 higher in [-1, 1]: 0.05 brighter in [0, 1], except where clamped at white
    errors = [np.where(clip == 255, 0.0, 0.05) for clip in clips]
    expected = np.mean([10 * math.log10(1 / np.mean(error**2)) for error in errors])
    assert tokenizer_psnr(IdentityTokenizer(offset=0.1), clips) == pytest.approx(expected, rel=1e-4)
    assert tokenizer_psnr(IdentityTokenizer(), clips) == MAX_PSNR
    reconstruction = reconstruct_clip(IdentityTokenizer(offset=0.1), clips[0])
    assert reconstruction.shape == clips[0].shape and reconstruction.dtype == np.float32
    np.testing.assert_allclose(reconstruction, clips[0] / 255 + errors[0], atol=1e-6)


def test_tokenizer_psnr_of_a_random_tokenizer_is_finite_and_low(pipe64):
    psnr = tokenizer_psnr(pipe64.video_tokenizer, [red_circle_moving_left(num_frames=5).video])
    assert math.isfinite(psnr) and psnr < TARGETS["tokenizer"]["psnr"]


def test_score_frames_finds_the_first_error():
    video = render_clip("red", "square", "right", size=10, speed=2.0, start=(30.5, 20.5), num_frames=65, bounce=True).video
    target = Triple("red", "square", "right")
    assert score_frames(analyse_clip(video), target) == {"colour_kept": 1.0, "shape_kept": 1.0, "bounce": 1.0,
                                                         "first_error_frame": 65}  # fmt: skip
    drifting = video.copy()
    drifting[40:] = drifting[40:][..., [1, 0, 2]]  # red turns green at frame 40
    scores = score_frames(analyse_clip(drifting), target)
    assert scores["colour_kept"] == pytest.approx(40 / 65) and scores["shape_kept"] == 1.0
    assert scores["first_error_frame"] == 40
    stray = video.copy()
    stray[20:, 55:60, 2:7] = (0, 0, 255)  # a second object from frame 20
    assert score_frames(analyse_clip(stray), target)["first_error_frame"] == 20
    assert score_frames(analyse_clip(np.zeros_like(video)), target) == {"colour_kept": 0.0, "shape_kept": 0.0,
                                                                        "bounce": 0.0, "first_error_frame": 0}  # fmt: skip


def test_real_bouncing_clips_score_perfectly_frame_by_frame():
    from videoar_hf.shapes import sample_clip

    rng = np.random.default_rng(0)
    for _ in range(12):
        clip = sample_clip(rng, triples=training_triples(), num_frames=129, bounce=True)
        assert score_frames(analyse_clip(clip.video), clip.triple) == {"colour_kept": 1.0, "shape_kept": 1.0,
                                                                       "bounce": 1.0, "first_error_frame": 129}  # fmt: skip


def test_paraphrases_are_not_training_captions():
    from videoar_hf.shapes import CAPTION_TEMPLATES, SHAPE_NOUNS, _MOTION_WORDS

    suite = paraphrase_suite()
    assert suite.paraphrase and set(suite.triples) == set(training_triples()) and len(set(suite.seeds)) == 100
    prompts = [prompt_for(*case, paraphrase=True) for case in suite.cases]
    assert len(set(prompts)) > 50
    for (colour, shape, motion), prompt in zip(suite.triples, prompts):
        captions = {template.format(colour=colour, shape=noun, **_MOTION_WORDS[motion])
                    for template in CAPTION_TEMPLATES for noun in SHAPE_NOUNS[shape]}  # fmt: skip
        assert prompt not in captions and colour in prompt and shape in prompt and motion in prompt


def test_long_suite_fails_a_model_that_stops_bouncing(tmp_path):
    cases = long_suite(2).cases
    pipe = PerfectPipeline([], long_cases=cases, long_num_frames=65)
    for triple, seed in cases:  # the object stops at the edge instead of turning back
        clip = pipe.clips[prompt_for(triple, seed)]
        stopped = reference_clip(triple, seed, num_frames=17)  # no bounce: a straight path that fits the frame
        clip.video = np.concatenate([stopped.video, np.repeat(stopped.video[-1:], 48, axis=0)])
    report = run_evaluation(pipe, tmp_path, suites=["long"], long_prompts=2, long_num_frames=65, progress=False)
    long = report["suites"]["long"]
    assert long["metrics"]["colour_kept"] == 1.0 and long["metrics"]["bounce"] < 0.5 and not long["passed"]
    with pytest.raises(ValueError, match="`long_num_frames` must be 1 \\+ 4k"):
        run_evaluation(pipe, tmp_path, suites=["long"], long_num_frames=64)


def test_bounce_consistency_of_long_bouncing_clips():
    from videoar_hf.evaluation import MAX_EDGE_STALL_STEPS, _touches_edge, bounce_consistency

    def clip(motion, start, **kwargs):
        return render_clip("red", "square", motion, size=10, speed=2.0, start=start, num_frames=65, resolution=64,
                           bounce=True, **kwargs).video  # fmt: skip

    for motion, start in (("right", (50.5, 20.5)), ("up", (30.5, 10.5)), ("left", (5.5, 40.5))):
        assert bounce_consistency(analyse_clip(clip(motion, start)), motion) == 1.0
    away_from_the_edges = analyse_clip(clip("right", (15.5, 20.5)))  # right for 20 frames before its first bounce
    assert bounce_consistency(away_from_the_edges, "left") < 0.75, "the first direction counts"
    # turning back in mid-frame is no bounce
    video = clip("right", (20.5, 20.5))
    turned = np.concatenate([video[:10], video[9::-1]])
    assert bounce_consistency(analyse_clip(turned), "right") < 0.6
    # reaching the edge and staying there is no bounce either
    straight = clip("right", (35.5, 20.5))[:13]  # 2 px a frame: the box reaches the right edge at frame 12
    stuck = np.concatenate([straight, np.repeat(straight[-1:], 40, axis=0)])
    assert _touches_edge(analyse_clip(stuck).frames[-1].mask, 0, 1, 2)
    assert bounce_consistency(analyse_clip(stuck), "right") < 0.35
    # but turning round within one latent frame, as the tokenizer reconstructs a bounce, is one
    def stall_at_the_edge(steps):  # `steps` steps without motion at the edge, then back the way it came
        there = straight[:12]  # frame 12 has already bounced back to where frame 11 was
        return analyse_clip(np.concatenate([there, np.repeat(there[-1:], steps - 1, axis=0), there[::-1]]))

    assert bounce_consistency(stall_at_the_edge(MAX_EDGE_STALL_STEPS), "right") == 1.0
    assert bounce_consistency(stall_at_the_edge(MAX_EDGE_STALL_STEPS + 1), "right") < 1.0
