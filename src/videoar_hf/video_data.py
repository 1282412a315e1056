"""Training data: text-video clips from a local video/image folder, a `save_to_disk` folder or a Hub dataset.

Rows come from `datasets` with the media column cast to `decode=False` (datasets' `Video` decoding needs
torchcodec); videos are decoded with PyAV and images with PIL, both through `media.py` (upright, square pixels,
the same reader as `videoar generate`). Items are `{"video": float32 (3, T, H, W) in [-1, 1], "text": str,
"source": str, "data_events": list}` (`source`: the file, or `dataset[row]`, for error messages;
`data_events`: the bad rows met while reading it, see `DataStats.drain`); batch them with `collate_clips`.

Clips: a file gives `clips_per_video` clips (an int, or "auto": as many as its duration holds), each its own
window: clip j of k starts at a seeded random time in the j-th of k equal parts of the possible starts, so the
clips of one file spread over all of it. Windows are a pure function of (seed, epoch, item), new each epoch
(`set_epoch`), so any worker layout and any resumed run see the same ones.

Images and videos: a dataset of `num_frames > 1` keeps only videos when it holds both (images would be 1-frame
clips that cannot be batched with them); `media` chooses explicitly. Which rows are images is decided from the
file extension (or the column's name), without decoding.

Streaming: rows are split across processes (`process_index`, `num_processes`) with
`datasets.distributed.split_dataset_by_node`, and across DataLoader workers by `datasets` itself (by shards:
workers beyond the number of shards get no rows). `state_dict()` / `load_state_dict()` resume a stream where it
stopped, mid-file included.

Bad rows never stop a run: an unreadable file or a too-short video is skipped, a missing caption becomes the
empty prompt, and each case is logged once per file and counted in `dataset.stats`. Counts live in the process
that reads the rows (with workers, each worker logs and counts its own share); the items carry them out as
`data_events`, which the training loop sums.
"""

import copy
import csv
import io
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from glob import glob

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.distributed import split_dataset_by_node
from diffusers.utils import logging

from .media import frames_to_clip, probe_video, read_image_frame, read_video_frames

logger = logging.get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MEDIA_COLUMNS = ("video", "image")
SHORT_VIDEO_RULES = ("skip", "pad")
MEDIA_FILTERS = ("auto", "videos", "images", "all")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
# headers read at once by clips_per_video="auto" (threads: opening a container mostly waits on the disk)
PROBE_THREADS = 8
# arrow shards of a save_to_disk folder read as a stream, so processes and DataLoader workers can split it
SAVED_STREAM_SHARDS = 64


class DataStats:
    """Rows that needed a fallback, by kind: `corrupt` (missing, unreadable or undecodable file) and `too_short`
    rows are skipped, `padded` and `missing_caption` rows are used. Each row counts (and logs) once per process."""

    SKIPPED = ("corrupt", "too_short")
    KINDS = SKIPPED + ("padded", "missing_caption")

    def __init__(self):
        self._rows = {kind: set() for kind in self.KINDS}
        self._new: list[tuple[str, str]] = []

    def record(self, kind: str, row_name: str, message: str) -> None:
        if row_name in self._rows[kind]:
            return
        self._rows[kind].add(row_name)
        self._new.append((kind, row_name))
        (logger.warning if kind in self.SKIPPED else logger.info)(message)

    def drain(self) -> list[tuple[str, str]]:
        """The `(kind, row)` records since the last call: items carry them as `data_events`, so a training loop
        counts what its DataLoader workers met (each worker holds its own `DataStats`)."""
        new, self._new = self._new, []
        return new

    def as_dict(self) -> dict[str, int]:
        return {kind: len(rows) for kind, rows in self._rows.items()}

    def rows(self) -> dict[str, set[str]]:
        """The rows recorded in this process, by kind."""
        return {kind: set(rows) for kind, rows in self._rows.items()}


def collate_clips(items: list[dict]) -> dict:
    """Batch items: `video` stacked to `(B, 3, T, H, W)`, `text` a list of strings. Clips of different lengths
    are refused naming their files."""
    by_length = {}
    for item in items:
        by_length.setdefault(item["video"].shape[1], []).append(item.get("source", "?"))
    if len(by_length) > 1:
        files = "; ".join(f"{length} frames: {', '.join(names)}" for length, names in sorted(by_length.items()))
        raise ValueError(
            f"Cannot batch clips of {sorted(by_length)} frames ({files}): images load as 1-frame clips, so keep "
            "images and videos apart (load_video_dataset(media='videos' or 'images')) or use num_frames=1."
        )
    return {"video": torch.stack([item["video"] for item in items]), "text": [item["text"] for item in items]}


@dataclass
class RowMedia:
    """A row's file, fetched once for all of its clips: a local path, or the file's bytes."""

    name: str
    data: str | bytes
    is_image: bool

    def open(self) -> str | io.BytesIO:
        return io.BytesIO(self.data) if isinstance(self.data, bytes) else self.data


class ClipReader:
    """Turns a `datasets` row into training clips, or into None (counted in `stats`) when it is unusable."""

    def __init__(
        self,
        *,
        num_frames: int,
        resolution: int | tuple[int, int],
        fps: float | None,
        media_column: str,
        caption_column: str = "text",
        random_offset: bool = True,
        short_video: str = "skip",
        allow_images: bool = True,
        clips_per_video: int | str = 1,
        max_clips_per_video: int | None = None,
        label_column: str | None = None,
        label_names: list[str] | None = None,
    ):
        self.num_frames = num_frames
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.fps = fps
        self.media_column = media_column
        self.caption_column = caption_column
        self.random_offset = random_offset
        self.short_video = short_video
        self.allow_images = allow_images
        self.clips_per_video = clips_per_video
        self.max_clips_per_video = max_clips_per_video
        self.label_column = label_column
        self.label_names = label_names
        self.stats = DataStats()

    def is_image(self, value) -> bool:
        """Whether a media value is an image, from its extension (or the column's name), without reading it."""
        return _is_image_path(_media_path(value), self.media_column)

    def fetch(self, row: dict, row_name: str) -> RowMedia | None:
        """The row's file, read into memory only when it is not local (None, counted, when it cannot be had)."""
        value = row[self.media_column]
        name = _media_path(value) or row_name
        try:
            data = _media_data(value)
        except Exception as error:  # fsspec and datasets raise all kinds of errors; one bad file must not end a run
            self.stats.record("corrupt", name, f"Skipping unreadable {name}: {error!r}")
            return None
        return RowMedia(name, data, self.is_image(value))

    def clip_count(self, media: RowMedia) -> int:
        """How many clips the file gives: 1 for an image, else `clips_per_video`, or for "auto" as many
        `num_frames / fps`-second windows as its duration holds (from the header; 1 when unknown or unreadable)."""
        if media.is_image:
            return 1
        if self.clips_per_video != "auto":
            return self.clips_per_video
        try:
            timing = probe_video(media.open())
        except Exception:  # the clip read will count and log it as corrupt
            return 1
        if timing.duration is None:
            return 1
        clip_seconds = self.num_frames * (1 / self.fps if self.fps else timing.frame_interval)
        count = max(1, int(timing.duration / clip_seconds + 1e-6))  # tolerance: 4.0 s / 2.0 s is 2 clips
        return min(count, self.max_clips_per_video) if self.max_clips_per_video else count

    def read(self, row: dict, media: RowMedia, rng: np.random.Generator, clip: int = 0, clips: int = 1):
        """Clip `clip` of `clips` of the row: its start is drawn by `rng` inside the clip's share of the
        possible starts (the share's beginning without `random_offset`)."""
        try:
            frames, wanted = self._decode(media, (clip + (rng.random() if self.random_offset else 0.0)) / clips)
        except Exception as error:  # decoders raise all kinds of errors; one bad file must not end a run
            self.stats.record("corrupt", media.name, f"Skipping unreadable {media.name}: {error!r}")
            return None
        frames = self._fit_length(frames, wanted, media.name)
        if frames is None:
            return None
        video = frames_to_clip(frames, self.size)
        item = {"video": video, "source": media.name}
        if self.label_column is not None:
            item["label"] = label_index(row[self.label_column], self.label_names)
        item["text"] = self._caption(row, media.name, item.get("label"))
        return item

    def _decode(self, media: RowMedia, start: float) -> tuple[list[np.ndarray], int]:
        """The frames of the row's media and how many a complete clip has (1 for an allowed image)."""
        if media.is_image:
            return [read_image_frame(media.open())], 1 if self.allow_images else self.num_frames
        frames = read_video_frames(media.open(), self.num_frames, self.fps, start=start, size=self.size)
        return frames, self.num_frames

    def _fit_length(self, frames: list[np.ndarray], wanted: int, row_name: str) -> list[np.ndarray] | None:
        """Rule for short videos: "pad" repeats the last frame when at least half the clip exists, else skip."""
        if len(frames) >= wanted:
            return frames
        found = f"{len(frames)} of {wanted} frames at {self.fps or 'source'} fps"
        if self.short_video == "pad" and 2 * len(frames) >= wanted:
            self.stats.record("padded", row_name, f"Padding {row_name} ({found}) with its last frame")
            return frames + [frames[-1]] * (wanted - len(frames))
        self.stats.record("too_short", row_name, f"Skipping too short {row_name}: {found}")
        return None

    def _caption(self, row: dict, row_name: str, label: int | None = None) -> str:
        if label is not None and self.caption_column not in row:  # class data: the class name is the caption
            return self.label_names[label]
        caption = row[self.caption_column]
        if isinstance(caption, str) and caption.strip():
            return caption
        self.stats.record("missing_caption", row_name, f"No caption for {row_name}; using the empty prompt")
        return ""


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style clips over a `datasets.Dataset`: item `i` is clip `j` of row `r` (with `k` clips per row,
    `r = i // k`, `j = i % k`; `clip_counts` gives each row its own `k`). `len()` counts clips.

    A skipped row is replaced by the next readable one (wrapping around), so batches keep their size and a
    neighbour may appear twice in an epoch. Known-bad rows are not decoded again.
    """

    def __init__(
        self,
        rows: datasets.Dataset,
        reader: ClipReader,
        source: str,
        seed: int = 0,
        clip_counts: int | list[int] = 1,
    ):
        self.rows = rows
        self.reader = reader
        self.stats = reader.stats
        self.label_names = reader.label_names  # the classes, with `label_column`
        self.source = source
        self.seed = seed
        self.epoch = 0
        counts = np.full(len(rows), clip_counts) if isinstance(clip_counts, int) else np.asarray(clip_counts)
        if len(counts) != len(rows) or (counts < 1).any():
            raise ValueError(f"clip_counts must be at least 1 for each of the {len(rows)} rows.")
        self.clip_counts = counts
        self._row_ends = np.cumsum(counts)  # item i belongs to the first row whose end is above i
        self._skipped_rows = set()

    def set_epoch(self, epoch: int) -> None:
        """New random clip windows each epoch, the same ones in every worker layout. Cheap: call it before any
        item, in any process."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self._row_ends[-1]) if len(self._row_ends) else 0

    def locate(self, index: int) -> tuple[int, int]:
        """`(row, clip)` of item `index`."""
        row = int(np.searchsorted(self._row_ends, index, side="right"))
        return row, index - int(self._row_ends[row] - self.clip_counts[row])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")  # also ends plain iteration
        row, clip = self.locate(index)
        num_rows = len(self.rows)
        for step in range(num_rows):
            row_index = (row + step) % num_rows
            if row_index in self._skipped_rows:
                continue
            clips = int(self.clip_counts[row_index])
            # seeded by the item, not the row: a replacement row gets its own window
            rng = np.random.default_rng((self.seed, self.epoch, index))
            row_data = self.rows[row_index]
            media = self.reader.fetch(row_data, f"{self.source}[{row_index}]")
            item = media and self.reader.read(row_data, media, rng, clip % clips, clips)
            if item is not None:
                return {**item, "data_events": self.stats.drain()}
            self._skipped_rows.add(row_index)
        raise RuntimeError(f"No readable clip in {self.source}: every row was skipped ({self.stats.as_dict()}).")


class IterableVideoClipDataset(torch.utils.data.IterableDataset):
    """Clips over a streaming `datasets.IterableDataset`: each row yields its clips in order; skipped rows and
    filtered-out media yield nothing.

    `state_dict()` after a clip and `load_state_dict()` on a fresh dataset resume right after that clip, with the
    same windows an uninterrupted run would have had: it holds the rows' `datasets` state before the current row
    and how many of its clips were already yielded. This is exact with `num_workers=0`. With DataLoader workers
    each worker holds its own copy and position: use torchdata's `StatefulDataLoader`, which calls these methods
    in each worker. Rows in a `datasets` shuffle buffer when the state was taken are lost on resume (datasets'
    rule).
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        reader: ClipReader,
        source: str,
        seed: int = 0,
        media_filter: str = "all",
        process_index: int = 0,
    ):
        self.rows = rows
        self.reader = reader
        self.stats = reader.stats
        self.label_names = reader.label_names  # the classes, with `label_column`
        self.source = source
        self.seed = seed
        self.media_filter = media_filter
        self.process_index = process_index
        self.epoch = 0
        self._state = None
        self._resume = None
        self._logged_exclusion = False

    def set_epoch(self, epoch: int) -> None:
        """New random clip windows, and a new shuffle if the rows were shuffled, each epoch. A state loaded for
        another epoch is dropped: the new epoch starts from its beginning."""
        self.epoch = epoch
        self.rows.set_epoch(epoch)
        if self._resume is not None and self._resume["epoch"] != epoch:
            self._resume = None

    def state_dict(self) -> dict:
        """Where the stream stands: after the last clip yielded (the loaded state before iterating)."""
        state = self._resume or self._state or {"rows": None, "position": 0, "clips_done": 0}
        return copy.deepcopy({**state, "epoch": self.epoch})

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (from `state_dict()`) at the next iteration; sets the epoch to the state's."""
        missing = {"epoch", "rows", "position", "clips_done"} - set(state)
        if missing:
            raise ValueError(f"state is not from IterableVideoClipDataset.state_dict(): no {sorted(missing)}.")
        self.epoch = state["epoch"]
        self.rows.set_epoch(self.epoch)
        self._resume = copy.deepcopy(state)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker else 0
        resume, self._resume = self._resume, None
        rows_state = resume["rows"] if resume else None
        position = resume["position"] if resume else 0
        done = resume["clips_done"] if resume else 0
        self._state = {"rows": rows_state, "position": position, "clips_done": done}
        if rows_state is not None:
            self.rows.load_state_dict(rows_state)
        for row in self.rows:
            if rows_state is not None:
                self.rows.load_state_dict(None)  # datasets keeps a loaded state for every later pass; used once
            state_after_row = self.rows.state_dict()  # datasets counts a row as consumed once it is handed out
            media = self._fetch(row, position)
            clips = self.reader.clip_count(media) if media else 0
            for clip in range(done, clips):
                rng = np.random.default_rng((self.seed, self.epoch, self.process_index, worker_id, position, clip))
                item = self.reader.read(row, media, rng, clip, clips)
                self._state = {"rows": rows_state, "position": position, "clips_done": clip + 1}
                if item is not None:
                    yield {**item, "data_events": self.stats.drain()}
            rows_state, position, done = state_after_row, position + 1, 0
            self._state = {"rows": rows_state, "position": position, "clips_done": 0}

    def _fetch(self, row: dict, position: int) -> RowMedia | None:
        value = row[self.reader.media_column]
        if not _wanted(self.reader.is_image(value), self.media_filter):
            if not self._logged_exclusion:
                self._logged_exclusion = True
                name = _media_path(value) or f"{self.source}[{position}]"
                logger.warning(f"{_exclusion_reason(self.media_filter, self.reader.num_frames)} (first: {name}).")
            return None
        return self.reader.fetch(row, f"{self.source}[{position}]")


def load_video_dataset(
    source: str,
    *,
    num_frames: int,
    resolution: int | tuple[int, int],
    fps: float | None = 8,
    split: str = "train",
    streaming: bool = False,
    random_offset: bool = True,
    seed: int = 0,
    short_video: str = "skip",
    allow_images: bool = True,
    caption_column: str = "text",
    media_column: str | None = None,
    clips_per_video: int | str = 1,
    max_clips_per_video: int | None = None,
    media: str = "auto",
    process_index: int = 0,
    num_processes: int = 1,
    label_column: str | None = None,
    **load_dataset_kwargs,
) -> VideoClipDataset | IterableVideoClipDataset:
    """Text-video clips of `num_frames` frames sampled at `fps`, resized and centre-cropped to `resolution`.

    Returns a `VideoClipDataset` (map-style) or, with `streaming=True`, an `IterableVideoClipDataset`; both have
    `stats` (see `DataStats`) and `set_epoch`. Batch them with `collate_clips`.

    Args:
        source: a folder of videos and/or images with `metadata.csv` or `metadata.jsonl` (`file_name` relative
            to the folder, and `caption_column`), a `save_to_disk` folder, or a Hub dataset id.
        fps: frame rate of the clip; `None` keeps the source rate.
        streaming: return an `IterableDataset` that reads rows as it goes.
        random_offset: start clips at a seeded random time (see `set_epoch`); False starts clip j of k at the
            beginning of its share (clip 0 at 0).
        short_video: "skip" videos shorter than the clip, or "pad" them by repeating the last frame when at
            least half the clip exists (shorter ones are skipped).
        allow_images: images load as 1-frame clips; False treats them as too-short videos.
        media_column: "video" or "image" by default, whichever the dataset has. Values may be
            `{"path", "bytes"}` dicts (datasets' `Video`/`Image` features), raw bytes or paths.
        clips_per_video: clips per video file, each its own window (images give one). "auto": as many as the
            video's duration holds, `floor(duration / (num_frames / fps))`, at least 1; map-style reads every
            video's container header once at load time to count them (streaming: as each row arrives).
        max_clips_per_video: with "auto", at most this many clips per video (None: no limit), so a few long
            videos cannot outweigh the rest.
        media: which rows to use: "videos", "images" (1-frame clips), "all", or "auto": "all" when `num_frames`
            is 1 or the data holds no videos (streaming: the media column is "image"), else "videos". Excluded
            rows are counted in one log line.
        process_index, num_processes: streaming only: this process's share of the rows
            (`datasets.distributed.split_dataset_by_node`). Map-style datasets are split by the sampler
            (`accelerate`'s `prepare`), so they ignore these.
        label_column: class data: items get `"label"`, the class index, from this column (a `ClassLabel`, as a
            videofolder whose sub-folders are the classes has, class names, or indices); the caption column is then
            optional (the class name stands in). The dataset's `label_names` lists the classes.
        load_dataset_kwargs: passed to `datasets.load_dataset` (e.g. `name`, `revision`, `cache_dir`).
    """
    _check_clip_args(num_frames, fps, short_video, clips_per_video, max_clips_per_video, media)
    _check_processes(process_index, num_processes)
    rows = _load_rows(os.path.expanduser(source), split, streaming, caption_column, load_dataset_kwargs)
    rows, media_column = _prepare_rows(rows, source, split, media_column, caption_column, label_column)
    label_names = _label_names(rows, label_column, source) if label_column else None
    reader = ClipReader(
        num_frames=num_frames,
        resolution=resolution,
        fps=fps,
        media_column=media_column,
        caption_column=caption_column,
        random_offset=random_offset,
        short_video=short_video,
        allow_images=allow_images,
        clips_per_video=clips_per_video,
        max_clips_per_video=max_clips_per_video,
        label_column=label_column,
        label_names=label_names,
    )
    if streaming:
        if num_processes > 1:
            rows = split_dataset_by_node(rows, rank=process_index, world_size=num_processes)
        if media == "auto":
            media = "all" if num_frames == 1 or media_column == "image" else "videos"
        return IterableVideoClipDataset(rows, reader, source, seed, media, process_index)
    is_image = _row_kinds(rows, media_column)
    if media == "auto":
        media = "all" if num_frames == 1 or is_image.all() else "videos"
    rows, is_image = _filter_media(rows, is_image, media, num_frames, source)
    if clips_per_video == "auto":
        clip_counts = _auto_clip_counts(rows, is_image, reader, source)
    else:
        clip_counts = np.where(is_image, 1, clips_per_video)
    return VideoClipDataset(rows, reader, source, seed, clip_counts.tolist())


def _check_clip_args(num_frames, fps, short_video, clips_per_video, max_clips_per_video, media) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None (source rate), got {fps}.")
    if short_video not in SHORT_VIDEO_RULES:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO_RULES}, got {short_video!r}.")
    if clips_per_video != "auto" and not (isinstance(clips_per_video, int) and clips_per_video >= 1):
        raise ValueError(f"clips_per_video must be an int >= 1 or 'auto', got {clips_per_video!r}.")
    if max_clips_per_video is not None and not (isinstance(max_clips_per_video, int) and max_clips_per_video >= 1):
        raise ValueError(f"max_clips_per_video must be an int >= 1 or None, got {max_clips_per_video!r}.")
    if media not in MEDIA_FILTERS:
        raise ValueError(f"media must be one of {MEDIA_FILTERS}, got {media!r}.")


def _check_processes(process_index: int, num_processes: int) -> None:
    if not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}.")
    if not (isinstance(process_index, int) and 0 <= process_index < num_processes):
        raise ValueError(f"process_index must be in [0, {num_processes}) (num_processes), got {process_index!r}.")


def _wanted(is_image: bool, media: str) -> bool:
    return media == "all" or (media == "images") == is_image


def _exclusion_reason(media: str, num_frames: int) -> str:
    kind = "images" if media == "videos" else "videos"
    why = f" ({num_frames}-frame clips cannot be batched with 1-frame images)" if media == "videos" else ""
    return f"Leaving out {kind}: media={media!r}{why}; media='all' keeps both"


def _row_kinds(rows: datasets.Dataset, media_column: str) -> np.ndarray:
    """Whether each row is an image, from the paths alone: Arrow reads the path field without the files' bytes."""
    column = rows.data.column(media_column)
    if pa.types.is_struct(column.type):
        paths = pc.struct_field(column, "path") if column.type.get_field_index("path") >= 0 else None
    else:
        paths = column if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else None
    if paths is None:  # raw bytes: the column's name decides
        return np.full(len(rows), media_column == "image")
    if rows._indices is not None:  # a selection: follow its index mapping
        paths = paths.take(rows._indices.column(0))
    return np.array([_is_image_path(path, media_column) for path in paths.to_pylist()], dtype=bool)


def _filter_media(rows: datasets.Dataset, is_image: np.ndarray, media: str, num_frames: int, source: str):
    keep = np.flatnonzero([_wanted(image, media) for image in is_image])
    if len(keep) == len(rows):
        return rows, is_image
    if len(keep) == 0:
        kinds = "images" if is_image.all() else "videos"
        raise ValueError(f"{source} has only {kinds}, which media={media!r} leaves out; use media='all'.")
    logger.warning(f"{_exclusion_reason(media, num_frames)}: {len(rows) - len(keep)} of {len(rows)} rows of {source}.")
    return rows.select(keep), is_image[keep]


def _auto_clip_counts(rows: datasets.Dataset, is_image: np.ndarray, reader: ClipReader, source: str) -> np.ndarray:
    """Clips per row for clips_per_video="auto": every video's container header is read once (no decoding)."""
    started = time.perf_counter()
    logger.info(f"Reading the durations of {int((~is_image).sum())} videos of {source} (clips_per_video='auto')")

    def count(index: int) -> int:
        if is_image[index]:
            return 1
        media = reader.fetch(rows[index], f"{source}[{index}]")
        return reader.clip_count(media) if media else 1

    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        counts = np.fromiter(pool.map(count, range(len(rows))), dtype=np.int64, count=len(rows))
    logger.info(f"{counts.sum()} clips from {len(rows)} rows in {time.perf_counter() - started:.1f} s")
    return counts


def _load_rows(source: str, split: str, streaming: bool, caption_column: str, load_dataset_kwargs: dict):
    """Rows of a `save_to_disk` folder, a local media folder or a Hub dataset, media not decoded yet."""
    if _is_saved_dataset(source):
        rows = datasets.load_from_disk(source)
        if isinstance(rows, datasets.DatasetDict):
            if split not in rows:
                raise ValueError(f"{source} has no split {split!r}; splits: {list(rows)}.")
            rows = rows[split]
        if not streaming:
            return rows
        return rows.to_iterable_dataset(num_shards=max(1, min(len(rows), SAVED_STREAM_SHARDS)))
    if os.path.isdir(source):
        _check_metadata(source, caption_column)
    else:
        hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith(".")
        # a path whose parent folder exists here is meant as a local folder, even if it reads like org/name
        if not hub_id or os.path.isdir(os.path.dirname(source)) or datasets.config.HF_HUB_OFFLINE:
            why = "the Hub is offline, " if hub_id and datasets.config.HF_HUB_OFFLINE else ""
            raise FileNotFoundError(
                f"{source!r} does not exist ({why}expected a folder of videos with metadata.csv or metadata.jsonl, a "
                "save_to_disk folder, or a Hub dataset id)."
            )
    try:
        return datasets.load_dataset(source, split=split, streaming=streaming, **load_dataset_kwargs)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise FileNotFoundError(f"{source!r} is no folder here, and no Hub dataset of that name loads: {error}") from error


def _is_saved_dataset(path: str) -> bool:
    marker_files = (datasets.config.DATASET_STATE_JSON_FILENAME, datasets.config.DATASETDICT_JSON_FILENAME)
    return any(os.path.isfile(os.path.join(path, name)) for name in marker_files)


def _check_metadata(folder: str, caption_column: str) -> None:
    """Fail early and by name where datasets' folder builders fail vaguely: metadata without rows or columns.
    Folders without metadata (e.g. parquet files of a downloaded Hub dataset) are checked after loading."""
    metadata_paths = sorted(
        path for name in METADATA_FILES for path in glob(os.path.join(folder, "**", name), recursive=True)
    )
    if not metadata_paths:
        return
    expected = f"'file_name' (relative to {folder}) and '{caption_column}' columns"
    headers = {path: _metadata_header(path) for path in metadata_paths}
    if not any(has_rows for _, has_rows in headers.values()):
        listed = ", ".join(metadata_paths)
        raise ValueError(f"{folder} is empty: {listed} list no files; expected rows with {expected}.")
    for path, (columns, _) in headers.items():
        for column in ("file_name", caption_column):
            if column not in columns:
                raise ValueError(f"{path} has no {column!r} column (columns: {columns}); expected {expected}.")


def _metadata_header(path: str) -> tuple[list[str], bool]:
    """Column names of a metadata file and whether it has at least one row."""
    with open(path, newline="", encoding="utf-8") as file:
        if path.endswith(".csv"):
            reader = csv.reader(file)
            columns = next(reader, [])
            return columns, next(reader, None) is not None
        first_line = next((line for line in file if line.strip()), None)
        return (list(json.loads(first_line)) if first_line else []), first_line is not None


def _prepare_rows(rows, source: str, split: str, media_column: str | None, caption_column: str,
                  label_column: str | None = None):  # fmt: skip
    """Pick and check the media, caption and label columns, turn off datasets' media decoding, refuse empty data."""
    columns = _column_names(rows)
    media_column = media_column or next((name for name in MEDIA_COLUMNS if name in columns), None)
    if media_column not in columns:
        wanted = repr(media_column) if media_column else " or ".join(map(repr, MEDIA_COLUMNS))
        raise ValueError(
            f"{source} has no media column {wanted} (columns: {columns}); expected videos (datasets Video dicts "
            "with path/bytes, raw bytes or paths) or images."
        )
    if label_column is not None and label_column not in columns:
        raise ValueError(f"{source} has no label column {label_column!r} (columns: {columns}); a videofolder whose "
                         "sub-folders are the classes has 'label'.")  # fmt: skip
    if caption_column not in columns and label_column is None:
        raise ValueError(
            f"{source} has no caption column {caption_column!r} (columns: {columns}); a local folder needs a "
            f"metadata.csv or metadata.jsonl with 'file_name' and {caption_column!r} columns."
        )
    feature = (rows.features or {}).get(media_column)
    if isinstance(feature, (datasets.Video, datasets.Image)):
        # datasets decodes Video with torchcodec (not usable here) and Image eagerly: read raw path/bytes instead
        rows = rows.cast_column(media_column, type(feature)(decode=False))
    if _is_empty(rows):
        raise ValueError(f"{source} has no rows in split {split!r}.")
    return rows, media_column


def _label_names(rows, label_column: str, source: str) -> list[str]:
    """The class names: a `ClassLabel`'s, the sorted distinct names of a text column, or `0..max` for indices."""
    feature = (rows.features or {}).get(label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if not isinstance(rows, datasets.Dataset):
        raise ValueError(f"{source}: a streamed dataset needs its label column {label_column!r} as a ClassLabel, "
                         "so the classes are known before the stream is read.")  # fmt: skip
    values = rows.unique(label_column)
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return [str(i) for i in range(max(values) + 1)]
    raise ValueError(f"{source}: the label column {label_column!r} must hold class names or indices >= 0, got "
                     f"{sorted(map(repr, values))[:5]}.")  # fmt: skip


def label_index(value, label_names: list[str]) -> int:
    """A row's class index, from its index or its class name."""
    return label_names.index(value) if isinstance(value, str) else int(value)


def _column_names(rows) -> list[str]:
    if rows.column_names is not None:
        return rows.column_names
    # streaming datasets without declared features: read the columns off the first row
    return list(next(iter(rows), None) or {})


def _is_empty(rows) -> bool:
    if isinstance(rows, datasets.Dataset):
        return len(rows) == 0
    return next(iter(rows.take(1)), None) is None


def _media_path(value) -> str | None:
    if isinstance(value, dict):
        return value.get("path")
    return value if isinstance(value, str) else None


def _media_data(value) -> str | bytes:
    """Something PyAV and PIL can open: a local path, or the file's bytes."""
    data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
    if data is not None:
        return data
    path = _media_path(value)
    if path is None:
        raise ValueError(f"media value has neither a path nor bytes: {type(value).__name__}")
    if os.path.exists(path):
        return path
    # remote files (hf://, https://, chained URLs) from streamed Hub datasets; missing local files raise here
    with fsspec.open(path, "rb") as file:
        return file.read()


def _is_image_path(path: str | None, media_column: str) -> bool:
    if path and os.path.splitext(path)[1]:
        return path.lower().endswith(IMAGE_EXTENSIONS)
    return media_column == "image"
