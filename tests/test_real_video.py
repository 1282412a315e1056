"""Real video the way users have it, on clips encoded here with PyAV: many clips per long file, windows that change
each epoch and repeat exactly, phone rotation and non-square pixels, images mixed into a video folder, clips
exactly as long as the video, the fast reduced-size decode, and streams split across processes and resumed.
"""

import gc
import json
import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from videoar_hf.media import cover_size, frames_to_clip, probe_video, read_video_frames
from videoar_hf.video_data import collate_clips, load_video_dataset

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def index_frame(index, size):
    """Frame `index` as two gray halves, `16 * (index % 16)` left and `16 * (index // 16)` right: 16 levels apart,
    so it survives compression and resizing."""
    frame = np.empty((*size, 3), np.uint8)
    frame[:, : size[1] // 2] = 16 * (index % 16)
    frame[:, size[1] // 2 :] = 16 * (index // 16)
    return frame


def read_indices(frames_THW):
    """Source frame indices back from `index_frame` frames: the outer quarters of each half."""
    quarter = frames_THW.shape[2] // 4
    low = frames_THW[:, :, :quarter].mean(axis=(1, 2)) / 16
    high = frames_THW[:, :, -quarter:].mean(axis=(1, 2)) / 16
    return (np.round(low) + 16 * np.round(high)).astype(int).tolist()


def clip_indices(video_3THW):
    return read_indices(((video_3THW + 1) * 127.5).mean(0).numpy())


def write_video(path, frames, fps, codec="mpeg4", rotation=None, sar=None, metadata=None):
    frames = list(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        stream.metadata.update(metadata or {})
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_index_video(path, num_frames, fps, size=(32, 48), codec="mpeg4"):
    return write_video(path, (index_frame(i, size) for i in range(num_frames)), fps, codec)


def write_metadata(folder, names):
    lines = "".join(f"{name},caption of {name}\n" for name in names)
    (folder / "metadata.csv").write_text("file_name,text\n" + lines)


def load(folder, tmp_path, **kwargs):
    kwargs = {"num_frames": 5, "resolution": 16, "fps": 8, **kwargs}
    return load_video_dataset(str(folder), cache_dir=str(tmp_path / "hf_cache"), **kwargs)


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return data


# ---------------------------------------------------------------- 1. many clips per file


def test_clips_per_video_spreads_windows_over_each_file(folder, tmp_path):
    write_index_video(folder / "a.mp4", 80, fps=16)  # 5 s
    write_index_video(folder / "b.mp4", 40, fps=16)  # 2.5 s
    write_metadata(folder, ["a.mp4", "b.mp4"])
    dataset = load(folder, tmp_path, clips_per_video=4, seed=1)
    assert len(dataset) == 8
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_clips)))
    assert batch["video"].shape == (8, 3, 5, 16, 16)
    assert batch["text"] == ["caption of a.mp4"] * 4 + ["caption of b.mp4"] * 4
    # clip j starts inside the j-th quarter of the possible starts (0 .. 5 - 0.5 - 1/16 s for a.mp4)
    latest = 5 - 0.5 - 1 / 16
    for epoch in range(3):
        dataset.set_epoch(epoch)
        starts = [clip_indices(dataset[j]["video"])[0] / 16 for j in range(4)]
        for j, start in enumerate(starts):
            assert j * latest / 4 - 1 / 16 <= start <= (j + 1) * latest / 4, (epoch, starts)
    assert [clip_indices(dataset[4 + j]["video"]) for j in range(4)] != [clip_indices(dataset[4]["video"])] * 4


def test_auto_clips_from_duration_and_its_cap(folder, tmp_path, caplog):
    write_index_video(folder / "five.mp4", 80, fps=16)  # 5 s: 8 windows of 5 frames at 8 fps (0.625 s)
    write_index_video(folder / "two.mp4", 20, fps=8)  # 2.5 s: 4
    write_index_video(folder / "short.mp4", 3, fps=8)  # shorter than one window: still 1 (padding can use it)
    write_metadata(folder, ["five.mp4", "two.mp4", "short.mp4"])
    assert probe_video(str(folder / "five.mp4")).duration == pytest.approx(5.0)
    with caplog.at_level(logging.INFO, logger="videoar_hf.video_data"):
        dataset = load(folder, tmp_path, clips_per_video="auto")
    assert dataset.clip_counts.tolist() == [8, 4, 1] and len(dataset) == 13
    assert any("durations of 3 videos" in record.getMessage() for record in caplog.records)
    assert load(folder, tmp_path, clips_per_video="auto", max_clips_per_video=3).clip_counts.tolist() == [3, 3, 1]
    stream = list(load(folder, tmp_path, clips_per_video="auto", max_clips_per_video=3, streaming=True))
    assert [item["text"] for item in stream] == ["caption of five.mp4"] * 3 + ["caption of two.mp4"] * 3


@pytest.mark.parametrize("kwargs", [{"clips_per_video": 0}, {"clips_per_video": "many"}, {"max_clips_per_video": 0},
                                    {"media": "video"}, {"process_index": 2, "num_processes": 2}])  # fmt: skip
def test_bad_clip_arguments_are_named(folder, tmp_path, kwargs):
    write_index_video(folder / "a.mp4", 20, fps=8)
    write_metadata(folder, ["a.mp4"])
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load(folder, tmp_path, **kwargs)


# ---------------------------------------------------------------- 2. windows per epoch, exactly repeatable


class EpochWrapper(torch.utils.data.Dataset):
    """What the training loop does: set the epoch in the worker process, then read the item."""

    def __init__(self, dataset, epoch):
        self.dataset, self.epoch = dataset, epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.dataset.set_epoch(self.epoch)
        return self.dataset[index]


def test_windows_change_each_epoch_and_are_a_function_of_seed_epoch_index(folder, tmp_path):
    write_index_video(folder / "a.mp4", 80, fps=16)
    write_index_video(folder / "b.mp4", 64, fps=16)
    write_metadata(folder, ["a.mp4", "b.mp4"])
    dataset = load(folder, tmp_path, clips_per_video=3, seed=7)
    by_epoch = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        by_epoch.append([clip_indices(dataset[i]["video"]) for i in range(len(dataset))])
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]

    fresh = load(folder, tmp_path, clips_per_video=3, seed=7)
    fresh.set_epoch(1)
    assert [clip_indices(fresh[i]["video"]) for i in reversed(range(6))] == by_epoch[1][::-1]
    loader = torch.utils.data.DataLoader(EpochWrapper(fresh, 2), batch_size=3, num_workers=2, collate_fn=collate_clips)
    assert [clip_indices(video) for batch in loader for video in batch["video"]] == by_epoch[2]
    other_seed = load(folder, tmp_path, clips_per_video=3, seed=8)
    assert [clip_indices(other_seed[i]["video"]) for i in range(6)] != by_epoch[0]


def test_forked_workers_survive_collecting_frames_read_before_the_fork(folder, tmp_path):
    """A frame read in the main process can outlive the read in a reference cycle (its side data). A forked
    DataLoader worker that collects it must not free swscale threads it does not have (that hung, or crashed)."""
    write_index_video(folder / "a.mp4", 40, fps=16)
    write_metadata(folder, ["a.mp4"])
    dataset = load(folder, tmp_path)
    in_main_process = clip_indices(dataset[0]["video"])
    loader = torch.utils.data.DataLoader(
        dataset, num_workers=1, multiprocessing_context="fork", worker_init_fn=lambda _: gc.collect(),
        collate_fn=collate_clips, timeout=30,
    )  # fmt: skip
    assert [clip_indices(video) for batch in loader for video in batch["video"]] == [in_main_process]


# ---------------------------------------------------------------- 3. rotation and pixel aspect ratio


def quadrants(size=(32, 48)):
    """Top left red, top right blue, bottom left green, bottom right white: every flip and turn shows."""
    frame = np.zeros((*size, 3), np.uint8)
    half_h, half_w = size[0] // 2, size[1] // 2
    frame[:half_h, :half_w], frame[:half_h, half_w:] = RED, BLUE
    frame[half_h:, :half_w], frame[half_h:, half_w:] = GREEN, WHITE
    return frame


def quadrant_colours(frame):
    h, w = frame.shape[0] // 4, frame.shape[1] // 4  # sample each quadrant's centre, away from blurred edges
    centres = [(h, w), (h, 3 * w), (3 * h, w), (3 * h, 3 * w)]
    return [tuple(int(c > 127) * 255 for c in frame[y, x]) for y, x in centres]


def displayed(frame, degrees, hflip=False, vflip=False):
    """PyAV's meaning of `set_display_rotation`: turn counter-clockwise by `degrees`, then mirror."""
    frame = np.rot90(frame, degrees // 90)
    frame = frame[:, ::-1] if hflip else frame
    return frame[::-1] if vflip else frame


ORIENTATIONS = [(0, True, False), (0, False, True), (90, False, False), (90, True, False), (90, False, True),
                (180, False, False), (270, False, False), (-90, False, False)]  # fmt: skip


@pytest.mark.parametrize("degrees, hflip, vflip", ORIENTATIONS)
def test_display_matrix_is_applied(tmp_path, degrees, hflip, vflip):
    source = quadrants()
    path = write_video(tmp_path / "phone.mp4", [source] * 4, fps=8, rotation=(degrees, hflip, vflip))
    expected = displayed(source, degrees, hflip, vflip)
    frame = read_video_frames(str(path), 1, None)[0]
    assert frame.shape == expected.shape
    assert quadrant_colours(frame) == quadrant_colours(expected)
    # the fast path (scaled in swscale, then turned) agrees, and so does a clip through frames_to_clip
    small = read_video_frames(str(path), 1, None, size=(8, 8))[0]
    assert small.shape[:2] == cover_size(*expected.shape[:2], (8, 8))
    assert quadrant_colours(small) == quadrant_colours(expected)


def test_h264_phone_video_trains_upright(folder, tmp_path):
    # a portrait phone video: stored landscape, shown turned a quarter clockwise (display matrix -90)
    source = np.zeros((32, 48, 3), np.uint8)
    source[:, :24], source[:, 24:] = RED, BLUE
    write_video(folder / "portrait.mp4", [source] * 24, fps=24, codec="libx264", rotation=(-90,))
    write_metadata(folder, ["portrait.mp4"])
    clip = load(folder, tmp_path, resolution=(24, 16))[0]["video"]
    rgb = ((clip[:, 0] + 1) * 127.5).permute(1, 2, 0).numpy()
    assert rgb.shape == (24, 16, 3)  # portrait, not squashed or cropped sideways
    # turned clockwise: the left (red) half is now on top
    assert quadrant_colours(rgb) == [RED, RED, BLUE, BLUE]


def test_legacy_rotate_tag(tmp_path):
    # old ffmpeg wrote a `rotate` tag (degrees clockwise); Matroska keeps it (PyAV reads it back as "ROTATE")
    path = write_video(tmp_path / "old.mkv", [quadrants()] * 4, fps=8, metadata={"rotate": "90"})
    with av.open(str(path)) as container:
        assert container.streams.video[0].metadata["ROTATE"] == "90"
    frame = read_video_frames(str(path), 1, None)[0]
    assert quadrant_colours(frame) == quadrant_colours(displayed(quadrants(), -90))


def test_non_square_pixels_are_shown_at_the_display_aspect_ratio(folder, tmp_path):
    # 176x144 with pixels 12:11 wide is a 4:3 picture (192x144 square pixels); a centred circle in the picture
    coded = np.zeros((144, 176, 3), np.uint8)
    y, x = np.mgrid[:144, :176]
    coded[((x - 88) * 12 / 11) ** 2 + (y - 72) ** 2 < 60**2] = WHITE
    path = write_video(folder / "cif.mp4", [coded] * 8, fps=8, sar=Fraction(12, 11))
    frame = read_video_frames(str(path), 1, None)[0]
    assert frame.shape == (144, 192, 3)
    white = frame.mean(2) > 127
    rows, columns = np.flatnonzero(white.any(1)), np.flatnonzero(white.any(0))
    assert abs((columns[-1] - columns[0]) - (rows[-1] - rows[0])) <= 2  # round again
    write_metadata(folder, ["cif.mp4"])
    clip = load(folder, tmp_path, resolution=(48, 64))[0]["video"]  # 4:3 to 4:3: nothing cropped
    white = ((clip[:, 0] + 1) * 127.5).mean(0).numpy() > 127
    rows, columns = np.flatnonzero(white.any(1)), np.flatnonzero(white.any(0))
    assert abs((columns[-1] - columns[0]) - (rows[-1] - rows[0])) <= 1
    assert abs((columns[-1] + columns[0]) / 2 - 31.5) <= 1 and abs((rows[-1] + rows[0]) / 2 - 23.5) <= 1


# ---------------------------------------------------------------- 4. images in a video folder


@pytest.fixture
def mixed_folder(folder):
    write_index_video(folder / "a.mp4", 20, fps=8)
    write_index_video(folder / "b.mp4", 20, fps=8)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "still.png")
    write_metadata(folder, ["a.mp4", "still.png", "b.mp4"])
    return folder


def test_images_are_left_out_of_a_video_dataset_with_one_line(mixed_folder, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="videoar_hf.video_data"):
        videos = load(mixed_folder, tmp_path)
    lines = [record.getMessage() for record in caplog.records if "Leaving out" in record.getMessage()]
    assert len(lines) == 1 and "images" in lines[0] and "1 of 3 rows" in lines[0]
    assert len(videos) == 2
    batch = next(iter(torch.utils.data.DataLoader(videos, batch_size=2, collate_fn=collate_clips)))
    assert batch["video"].shape == (2, 3, 5, 16, 16)

    stream = load(mixed_folder, tmp_path, streaming=True)
    assert [item["text"] for item in stream] == ["caption of a.mp4", "caption of b.mp4"]

    frames = load(mixed_folder, tmp_path, num_frames=1)  # one frame: images and a frame of each video
    assert len(frames) == 3 and {frames[i]["video"].shape for i in range(3)} == {(3, 1, 16, 16)}
    images = load(mixed_folder, tmp_path, media="images")
    assert len(images) == 1 and images[0]["video"].shape == (3, 1, 16, 16)


def test_collate_names_the_files_of_a_mixed_batch(mixed_folder, tmp_path):
    everything = load(mixed_folder, tmp_path, media="all")
    with pytest.raises(ValueError, match=r"1 frames: .*still\.png; 5 frames: .*a\.mp4, .*b\.mp4"):
        next(iter(torch.utils.data.DataLoader(everything, batch_size=3, collate_fn=collate_clips)))


def test_a_folder_of_only_images_still_loads(folder, tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "still.png")
    write_metadata(folder, ["still.png"])
    assert load(folder, tmp_path, num_frames=17)[0]["video"].shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="only images, which media='videos' leaves out"):
        load(folder, tmp_path, media="videos")


# ---------------------------------------------------------------- 5. a clip exactly as long as the video


@pytest.mark.parametrize("source_fps", [24, 25, 30, 8])
@pytest.mark.parametrize("random_offset", [False, True])
def test_two_second_clip_of_a_two_second_video(folder, tmp_path, source_fps, random_offset):
    num_source = 2 * source_fps
    write_index_video(folder / "two.mp4", num_source, fps=source_fps)
    write_metadata(folder, ["two.mp4"])
    dataset = load(folder, tmp_path, num_frames=17, fps=8, random_offset=random_offset)
    indices = clip_indices(dataset[0]["video"])
    # on screen at i / 8 s; at 2.0 s, the end of the video, the last frame
    assert indices == [min(i * source_fps // 8, num_source - 1) for i in range(17)]
    assert dataset.stats.as_dict()["too_short"] == 0


# ---------------------------------------------------------------- 6. the fast decode matches the full-size one


def test_reduced_size_decode_matches_the_full_size_path(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:180, :320]
    frames = []
    for t in range(8):  # smooth shapes and a little texture, like natural video
        frame = np.stack([128 + 80 * np.sin((x + 6 * t) / 25), 128 + 80 * np.cos(y / 19), 100 + 0 * x], -1)
        frame[(x - 100 - 5 * t) ** 2 + (y - 90) ** 2 < 40**2] = (230, 40, 40)
        frames.append(np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8))
    path = str(write_video(tmp_path / "hd.mp4", frames, fps=8, codec="libx264"))
    for size in [(32, 32), (64, 48), (90, 160)]:
        old = frames_to_clip(read_video_frames(path, 8, None), size)
        new = frames_to_clip(read_video_frames(path, 8, None, size=size), size)
        psnr = 10 * np.log10(4 / float(((old - new) ** 2).mean()))
        assert psnr > 35, (size, psnr)


# ---------------------------------------------------------------- 7. streams split per process, resumed exactly


@pytest.fixture
def five_videos(folder):
    names = [f"{i}.mp4" for i in range(5)]
    for i, name in enumerate(names):
        write_index_video(folder / name, 24 + 4 * i, fps=8)
    write_metadata(folder, names)
    return folder


def test_processes_see_disjoint_rows_that_cover_all(five_videos, tmp_path):
    seen = [
        [item["text"] for item in load(five_videos, tmp_path, streaming=True, process_index=p, num_processes=2)]
        for p in range(2)
    ]
    assert set(seen[0]).isdisjoint(seen[1]) and all(seen)
    assert sorted(seen[0] + seen[1]) == sorted(f"caption of {i}.mp4" for i in range(5))


def test_dataloader_workers_split_a_sharded_stream(five_videos, tmp_path):
    import datasets

    # a save_to_disk folder streams as several shards, which datasets hands to the workers
    rows = datasets.load_dataset(str(five_videos), split="train", cache_dir=str(tmp_path / "hf_cache"))
    rows.save_to_disk(str(tmp_path / "saved"))
    stream = load(tmp_path / "saved", tmp_path, streaming=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert sorted(item["text"] for item in loader) == sorted(f"caption of {i}.mp4" for i in range(5))


@pytest.mark.parametrize("stop_after", [0, 1, 3, 4, 9])
def test_resuming_a_stream_gives_exactly_the_remaining_clips(five_videos, tmp_path, stop_after):
    kwargs = {"streaming": True, "clips_per_video": 2, "seed": 5}
    full = list(load(five_videos, tmp_path, **kwargs))
    assert len(full) == 10

    interrupted = load(five_videos, tmp_path, **kwargs)
    iterator = iter(interrupted)
    for _ in range(stop_after):
        next(iterator)
    state = json.loads(json.dumps(interrupted.state_dict()))  # a checkpoint may store it as JSON

    resumed = load(five_videos, tmp_path, **kwargs)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [item["source"] for item in rest] == [item["source"] for item in full[stop_after:]]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, full[stop_after:], strict=True))
    assert [item["text"] for item in resumed] == [item["text"] for item in full]  # the next pass starts over


def test_resume_state_of_another_epoch_is_dropped(five_videos, tmp_path):
    stream = load(five_videos, tmp_path, streaming=True)
    iterator = iter(stream)
    next(iterator)
    state = stream.state_dict()
    resumed = load(five_videos, tmp_path, streaming=True)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the same epoch: still resumes
    assert len(list(resumed)) == 4
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert len(list(resumed)) == 5
    with pytest.raises(ValueError, match="state_dict"):
        resumed.load_state_dict({"epoch": 0})


def test_class_folders_give_labels_and_class_names(tmp_path):
    for cls in ("ApplyEyeMakeup", "Biking"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            write_index_video(tmp_path / cls / f"v{i}.mp4", num_frames=12, fps=8)
    dataset = load_video_dataset(str(tmp_path), num_frames=5, resolution=16, fps=8, label_column="label")
    assert dataset.label_names == ["ApplyEyeMakeup", "Biking"]
    items = [dataset[i] for i in range(len(dataset))]
    assert sorted((item["label"], item["text"]) for item in items) == [(0, "ApplyEyeMakeup")] * 2 + [(1, "Biking")] * 2
    with pytest.raises(ValueError, match="no label column 'class'"):
        load_video_dataset(str(tmp_path), num_frames=5, resolution=16, fps=8, label_column="class")
