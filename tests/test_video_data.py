"""Training data from real tiny video and image files: sampling, resizing, bad rows and clear errors, all offline.

Not testable offline: `load_dataset("org/name")` against the Hub and streamed `hf://` files. The same code path
is exercised with a local parquet folder laid out like a Hub dataset repo and with `save_to_disk` folders.
"""

import csv
import json
import logging

import av
import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from videoar_hf.media import frames_to_clip
from videoar_hf.video_data import collate_clips, load_video_dataset

# frame i of a test video is solid gray GRAY_STEP * i, so a clip tells which source frames it holds
GRAY_STEP = 10


def write_video(path, num_frames, fps=16, size=(32, 48)):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for index in range(num_frames):
            frame = np.full((*size, 3), GRAY_STEP * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_metadata(folder, rows, metadata_format="csv"):
    if metadata_format == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    with open(folder / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def frame_indices(video):
    gray = (video + 1) * 127.5
    return [round(gray[:, t].mean().item() / GRAY_STEP) for t in range(video.shape[1])]


def load(source, tmp_path, **kwargs):
    # datasets' Arrow cache goes to the test's tmp_path, not the user's cache
    kwargs = {"num_frames": 5, "resolution": 16, "fps": 8, "random_offset": False, **kwargs}
    return load_video_dataset(str(source), cache_dir=str(tmp_path / "hf_cache"), **kwargs)


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def video_folder(folder):
    write_video(folder / "long.mp4", 20)
    write_video(folder / "other.mp4", 18)
    rows = [{"file_name": "long.mp4", "text": "a red circle"}, {"file_name": "other.mp4", "text": "a blue square"}]
    write_metadata(folder, rows)
    return folder


@pytest.mark.parametrize("metadata_format", ["csv", "jsonl"])
def test_videofolder_items(folder, tmp_path, metadata_format):
    write_video(folder / "clip.mp4", 20)
    write_metadata(folder, [{"file_name": "clip.mp4", "text": "a red circle"}], metadata_format)
    dataset = load(folder, tmp_path)
    item = dataset[0]
    assert len(dataset) == 1
    assert item["text"] == "a red circle"
    assert item["video"].shape == (3, 5, 16, 16) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1


@pytest.mark.parametrize(
    "fps, expected",
    [
        (8, [0, 2, 4, 6, 8]),
        (16, [0, 1, 2, 3, 4]),
        (None, [0, 1, 2, 3, 4]),
        (4, [0, 4, 8, 12, 16]),
        (32, [0, 0, 1, 1, 2]),
    ],
)
def test_fps_resampling_picks_frames_by_timestamp(video_folder, tmp_path, fps, expected):
    assert frame_indices(load(video_folder, tmp_path, fps=fps)[0]["video"]) == expected


def test_random_offset_is_seeded_and_keeps_the_clip_inside_the_video(video_folder, tmp_path):
    dataset = load(video_folder, tmp_path, random_offset=True, seed=3)
    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        indices = frame_indices(dataset[0]["video"])
        assert indices == frame_indices(dataset[0]["video"])
        assert np.diff(indices).tolist() == [2, 2, 2, 2] and indices[-1] <= 19
        starts.add(indices[0])
    assert len(starts) > 1


def test_resize_then_centre_crop(folder, tmp_path):
    image = np.full((32, 48, 3), 255, np.uint8)
    image[:, :6] = image[:, -6:] = 0  # side bars that a centre crop to a square must cut away
    Image.fromarray(image).save(folder / "bars.png")
    write_video(folder / "wide.mp4", 20)
    write_metadata(folder, [{"file_name": "bars.png", "text": "bars"}, {"file_name": "wide.mp4", "text": "wide"}])
    square = load(folder, tmp_path, media="all")
    assert square[0]["video"].shape == (3, 1, 16, 16)
    assert square[0]["video"].min() > 0.95
    assert load(folder, tmp_path, resolution=(8, 24), media="all")[1]["video"].shape == (3, 5, 8, 24)


def test_frames_to_clip_crops_the_centre():
    columns = np.broadcast_to(np.arange(8, dtype=np.uint8) * 30, (4, 8))
    frame = np.repeat(columns[:, :, None], 3, axis=2)
    clip = frames_to_clip([frame], (4, 4))
    assert torch.allclose((clip[0, 0, 0] + 1) * 127.5, torch.tensor([60.0, 90.0, 120.0, 150.0]))


def test_imagefolder_gives_one_frame_clips(folder, tmp_path):
    for level in range(3):
        Image.fromarray(np.full((20, 30, 3), 50 * level, np.uint8)).save(folder / f"{level}.png")
    write_metadata(folder, [{"file_name": f"{level}.png", "text": f"gray {level}"} for level in range(3)])
    dataset = load(folder, tmp_path, num_frames=17)
    assert [dataset[i]["video"].shape for i in range(3)] == [(3, 1, 16, 16)] * 3
    assert dataset[2]["text"] == "gray 2"


def test_images_in_a_videofolder(video_folder, tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(video_folder / "still.png")
    rows = [{"file_name": "long.mp4", "text": "video"}, {"file_name": "still.png", "text": "image"}]
    write_metadata(video_folder, rows)
    dataset = load(video_folder, tmp_path, media="all")
    assert [dataset[i]["video"].shape[1] for i in range(2)] == [5, 1]

    videos_only = load(video_folder, tmp_path, media="all", allow_images=False)
    assert videos_only[1]["text"] == "video"  # the image is skipped, its neighbour takes its place
    assert videos_only.stats.as_dict()["too_short"] == 1


def test_streaming_matches_map_style(video_folder, tmp_path):
    map_items = list(load(video_folder, tmp_path))
    stream_items = list(load(video_folder, tmp_path, streaming=True))
    assert [item["text"] for item in stream_items] == [item["text"] for item in map_items]
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(stream_items, map_items, strict=True))


@pytest.fixture
def messy_folder(video_folder):
    (video_folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    write_video(video_folder / "short.mp4", 12)
    rows = [
        {"file_name": "long.mp4", "text": "good"},
        {"file_name": "corrupt.mp4", "text": "corrupt"},
        {"file_name": "missing.mp4", "text": "missing file"},
        {"file_name": "short.mp4", "text": "short"},
        {"file_name": "other.mp4", "text": ""},
    ]
    write_metadata(video_folder, rows)
    return video_folder


def test_bad_rows_are_skipped_counted_and_logged(messy_folder, tmp_path, caplog):
    dataset = load(messy_folder, tmp_path, num_frames=9)
    with caplog.at_level(logging.INFO, logger="videoar_hf.video_data"):
        batches = list(torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collate_clips))
    assert batches[0]["video"].shape == (5, 3, 9, 16, 16)
    assert set(batches[0]["text"]) == {"good", ""}
    assert dataset.stats.as_dict() == {"corrupt": 2, "too_short": 1, "padded": 0, "missing_caption": 1}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any("corrupt.mp4" in line for line in warnings) and any("missing.mp4" in line for line in warnings)


def test_streaming_skips_bad_rows(messy_folder, tmp_path):
    dataset = load(messy_folder, tmp_path, num_frames=9, streaming=True)
    assert [item["text"] for item in dataset] == ["good", ""]
    assert dataset.stats.as_dict() == {"corrupt": 2, "too_short": 1, "padded": 0, "missing_caption": 1}


def test_short_video_padding_rule(messy_folder, tmp_path):
    # short.mp4 lasts 0.75 s: 7 frames at 8 fps (the last shown at its end), enough to pad a 9-frame clip, not a
    # 17-frame one
    padded = load(messy_folder, tmp_path, num_frames=9, short_video="pad")
    assert frame_indices(padded[3]["video"]) == [0, 2, 4, 6, 8, 10, 11, 11, 11]
    assert padded.stats.as_dict()["padded"] == 1

    too_short = load(messy_folder, tmp_path, num_frames=17, short_video="pad")
    assert too_short[3]["text"] == ""
    assert too_short.stats.as_dict()["too_short"] == 1


def test_missing_caption_in_csv_becomes_empty_prompt(video_folder, tmp_path):
    (video_folder / "metadata.csv").write_text("file_name,text\nlong.mp4,\n")
    dataset = load(video_folder, tmp_path)
    assert dataset[0]["text"] == ""
    assert dataset.stats.as_dict()["missing_caption"] == 1


def _hub_style_rows(folder):
    """Rows as a Hub video dataset has them: a `Video` feature holding bytes or a path, and captions."""
    write_video(folder / "long.mp4", 20)
    write_video(folder / "other.mp4", 18)
    videos = [
        {"bytes": (folder / "long.mp4").read_bytes(), "path": "long.mp4"},
        {"bytes": None, "path": str(folder / "other.mp4")},
    ]
    rows = {"video": videos, "text": ["from bytes", "from path"]}
    features = datasets.Features({"video": datasets.Video(decode=False), "text": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features).cast_column("video", datasets.Video())


@pytest.mark.parametrize("streaming", [False, True])
def test_saved_hub_style_dataset(folder, tmp_path, streaming):
    _hub_style_rows(folder).save_to_disk(str(tmp_path / "saved"))
    dataset = load(tmp_path / "saved", tmp_path, streaming=streaming)
    items = list(dataset)
    assert [item["text"] for item in items] == ["from bytes", "from path"]
    assert [frame_indices(item["video"]) for item in items] == [[0, 2, 4, 6, 8]] * 2


def test_parquet_repo_layout_loads_through_load_dataset(folder, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    _hub_style_rows(folder).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    dataset = load(repo, tmp_path)
    assert [dataset[i]["text"] for i in range(2)] == ["from bytes", "from path"]


def test_binary_column_and_nan_caption(tmp_path):
    write_video(tmp_path / "clip.mp4", 20)
    rows = {"video": [(tmp_path / "clip.mp4").read_bytes()], "text": [float("nan")]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "binary"))
    dataset = load(tmp_path / "binary", tmp_path)
    assert dataset[0]["video"].shape == (3, 5, 16, 16)
    assert dataset[0]["text"] == "" and dataset.stats.as_dict()["missing_caption"] == 1


def test_image_feature_dataset(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    image = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    images = datasets.Dataset.from_dict({"image": [image], "text": ["pil"]}, features=features)
    images.save_to_disk(str(tmp_path / "images"))
    assert load(tmp_path / "images", tmp_path)[0]["video"].shape == (3, 1, 16, 16)


def test_collate_refuses_mixed_lengths():
    with pytest.raises(ValueError, match="1-frame clips"):
        collate_clips([{"video": torch.zeros(3, frames, 4, 4), "text": ""} for frames in (1, 5)])


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere", tmp_path)


@pytest.mark.parametrize(
    "metadata, error",
    [
        ("file_name,text\n", "is empty"),
        ("file_name,caption\nlong.mp4,x\n", "no 'text' column"),
        ("name,text\nlong.mp4,x\n", "no 'file_name' column"),
    ],
)
def test_bad_metadata_is_refused_before_training(video_folder, tmp_path, metadata, error):
    (video_folder / "metadata.csv").write_text(metadata)
    with pytest.raises(ValueError, match=error) as raised:
        load(video_folder, tmp_path)
    assert str(video_folder) in str(raised.value)


def test_folder_without_metadata_has_no_captions(folder, tmp_path):
    write_video(folder / "long.mp4", 20)
    with pytest.raises(ValueError, match="no caption column 'text'"):
        load(folder, tmp_path)


def test_empty_folder(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(folder)):
        load(folder, tmp_path)


def test_saved_dataset_without_media_column(tmp_path):
    datasets.Dataset.from_dict({"clip": ["a.mp4"], "text": ["x"]}).save_to_disk(str(tmp_path / "no_media"))
    with pytest.raises(ValueError, match="no media column 'video' or 'image'"):
        load(tmp_path / "no_media", tmp_path)


@pytest.mark.parametrize("streaming", [False, True])
def test_empty_hub_style_dataset(tmp_path, streaming):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    features = datasets.Features({"video": datasets.Value("binary"), "text": datasets.Value("string")})
    empty = datasets.Dataset.from_dict({"video": [], "text": []}, features=features)
    empty.to_parquet(str(repo / "data" / "train.parquet"))
    # map-style: datasets itself refuses an empty split; streaming: checked by peeking at the first row
    with pytest.raises(ValueError, match="no rows" if streaming else "no data"):
        load(repo, tmp_path, streaming=streaming)


@pytest.mark.parametrize("kwargs", [{"num_frames": 0}, {"fps": 0}, {"short_video": "loop"}])
def test_bad_arguments(video_folder, tmp_path, kwargs):
    with pytest.raises(ValueError):
        load(video_folder, tmp_path, **kwargs)
