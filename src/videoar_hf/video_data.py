"""Training data: text-video clips from a local video/image folder, a `save_to_disk` folder or a Hub dataset.

Rows come from `datasets` with the media column cast to `decode=False` (datasets' `Video` decoding needs
torchcodec); videos are decoded with PyAV and images with PIL. Items match `ShapesDataset`:
`{"video": float32 (3, T, H, W) in [-1, 1], "text": str}`.

Bad rows never stop a run: an unreadable file or a too-short video is skipped, a missing caption becomes the
empty prompt, and each case is logged once per file and counted in `dataset.stats`. Counts live in the process
that reads the rows: exact with `num_workers=0`; with workers each worker logs and counts its own share.
"""

import csv
import io
import json
import os
import re
from glob import glob

import datasets
import fsspec
import numpy as np
import torch
from diffusers.utils import logging

from .media import frames_to_clip, read_image_frame, read_video_frames

logger = logging.get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MEDIA_COLUMNS = ("video", "image")
SHORT_VIDEO_RULES = ("skip", "pad")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")

class DataStats:
    """Rows that needed a fallback, by kind: `corrupt` (missing, unreadable or undecodable file) and `too_short`
    rows are skipped, `padded` and `missing_caption` rows are used. Each row counts (and logs) once per process."""

    SKIPPED = ("corrupt", "too_short")
    KINDS = SKIPPED + ("padded", "missing_caption")

    def __init__(self):
        self._rows = {kind: set() for kind in self.KINDS}

    def record(self, kind: str, row_name: str, message: str) -> None:
        if row_name in self._rows[kind]:
            return
        self._rows[kind].add(row_name)
        (logger.warning if kind in self.SKIPPED else logger.info)(message)

    def as_dict(self) -> dict[str, int]:
        return {kind: len(rows) for kind, rows in self._rows.items()}


def collate_clips(items: list[dict]) -> dict:
    """Batch items: `video` stacked to `(B, 3, T, H, W)`, `text` a list of strings."""
    lengths = sorted({item["video"].shape[1] for item in items})
    if len(lengths) > 1:
        raise ValueError(
            f"Cannot batch clips of {lengths} frames: images load as 1-frame clips, so keep images and videos "
            "in separate datasets (or use num_frames=1)."
        )
    return {"video": torch.stack([item["video"] for item in items]), "text": [item["text"] for item in items]}


class ClipReader:
    """Turns one `datasets` row into a training item, or into None (counted in `stats`) when it is unusable."""

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
    ):
        self.num_frames = num_frames
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        self.fps = fps
        self.media_column = media_column
        self.caption_column = caption_column
        self.random_offset = random_offset
        self.short_video = short_video
        self.allow_images = allow_images
        self.stats = DataStats()

    def read(self, row: dict, row_name: str, rng: np.random.Generator) -> dict | None:
        """`row_name` names the row in logs when its media has no path; `rng` draws the clip's start time."""
        value = row[self.media_column]
        row_name = _media_path(value) or row_name
        try:
            frames, wanted = self._decode(value, rng)
        except Exception as error:  # decoders raise all kinds of errors; one bad file must not end a run
            self.stats.record("corrupt", row_name, f"Skipping unreadable {row_name}: {error!r}")
            return None
        frames = self._fit_length(frames, wanted, row_name)
        if frames is None:
            return None
        return {"video": frames_to_clip(frames, self.size), "text": self._caption(row, row_name)}

    def _decode(self, value, rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
        """The frames of the row's media and how many a complete clip has (1 for an allowed image)."""
        media = _open_media(value)
        if _is_image(value, self.media_column):
            return [read_image_frame(media)], 1 if self.allow_images else self.num_frames
        start_rng = rng if self.random_offset else None
        return read_video_frames(media, self.num_frames, self.fps, start_rng), self.num_frames

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

    def _caption(self, row: dict, row_name: str) -> str:
        caption = row[self.caption_column]
        if isinstance(caption, str) and caption.strip():
            return caption
        self.stats.record("missing_caption", row_name, f"No caption for {row_name}; using the empty prompt")
        return ""


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style clips over a `datasets.Dataset`.

    A skipped row is replaced by the next readable one (wrapping around), so batches keep their size and a
    neighbour may appear twice in an epoch. Known-bad rows are not decoded again.
    """

    def __init__(self, rows: datasets.Dataset, reader: ClipReader, source: str, seed: int = 0):
        self.rows = rows
        self.reader = reader
        self.stats = reader.stats
        self.source = source
        self.seed = seed
        self.epoch = 0
        self._skipped_rows = set()

    def set_epoch(self, epoch: int) -> None:
        """New random clip offsets each epoch, the same ones in every worker layout."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"index {index} out of range for {len(self.rows)} rows")  # also ends plain iteration
        for step in range(len(self.rows)):
            row_index = (index + step) % len(self.rows)
            if row_index in self._skipped_rows:
                continue
            rng = np.random.default_rng((self.seed, self.epoch, row_index))
            item = self.reader.read(self.rows[row_index], f"{self.source}[{row_index}]", rng)
            if item is not None:
                return item
            self._skipped_rows.add(row_index)
        raise RuntimeError(f"No readable clip in {self.source}: every row was skipped ({self.stats.as_dict()}).")


class IterableVideoClipDataset(torch.utils.data.IterableDataset):
    """Clips over a streaming `datasets.IterableDataset`; skipped rows are simply not yielded."""

    def __init__(self, rows: datasets.IterableDataset, reader: ClipReader, source: str, seed: int = 0):
        self.rows = rows
        self.reader = reader
        self.stats = reader.stats
        self.source = source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random clip offsets, and a new shuffle if the rows were shuffled, each epoch."""
        self.epoch = epoch
        self.rows.set_epoch(epoch)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng((self.seed, self.epoch, worker.id if worker else 0))
        for position, row in enumerate(self.rows):
            item = self.reader.read(row, f"{self.source}[{position}]", rng)
            if item is not None:
                yield item


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
        random_offset: start clips at a seeded random time (see `set_epoch`); False starts at 0.
        short_video: "skip" videos shorter than the clip, or "pad" them by repeating the last frame when at
            least half the clip exists (shorter ones are skipped).
        allow_images: images load as 1-frame clips; False treats them as too-short videos.
        media_column: "video" or "image" by default, whichever the dataset has. Values may be
            `{"path", "bytes"}` dicts (datasets' `Video`/`Image` features), raw bytes or paths.
        load_dataset_kwargs: passed to `datasets.load_dataset` (e.g. `name`, `revision`, `cache_dir`).
    """
    _check_clip_args(num_frames, fps, short_video)
    rows = _load_rows(os.path.expanduser(source), split, streaming, caption_column, load_dataset_kwargs)
    rows, media_column = _prepare_rows(rows, source, split, media_column, caption_column)
    reader = ClipReader(
        num_frames=num_frames,
        resolution=resolution,
        fps=fps,
        media_column=media_column,
        caption_column=caption_column,
        random_offset=random_offset,
        short_video=short_video,
        allow_images=allow_images,
    )
    dataset_class = IterableVideoClipDataset if streaming else VideoClipDataset
    return dataset_class(rows, reader, source, seed)


def _check_clip_args(num_frames: int, fps: float | None, short_video: str) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None (source rate), got {fps}.")
    if short_video not in SHORT_VIDEO_RULES:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO_RULES}, got {short_video!r}.")


def _load_rows(source: str, split: str, streaming: bool, caption_column: str, load_dataset_kwargs: dict):
    """Rows of a `save_to_disk` folder, a local media folder or a Hub dataset, media not decoded yet."""
    if _is_saved_dataset(source):
        rows = datasets.load_from_disk(source)
        if isinstance(rows, datasets.DatasetDict):
            if split not in rows:
                raise ValueError(f"{source} has no split {split!r}; splits: {list(rows)}.")
            rows = rows[split]
        return rows.to_iterable_dataset() if streaming else rows
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


def _prepare_rows(rows, source: str, split: str, media_column: str | None, caption_column: str):
    """Pick and check the media and caption columns, turn off datasets' media decoding, refuse empty data."""
    columns = _column_names(rows)
    media_column = media_column or next((name for name in MEDIA_COLUMNS if name in columns), None)
    if media_column not in columns:
        wanted = repr(media_column) if media_column else " or ".join(map(repr, MEDIA_COLUMNS))
        raise ValueError(
            f"{source} has no media column {wanted} (columns: {columns}); expected videos (datasets Video dicts "
            "with path/bytes, raw bytes or paths) or images."
        )
    if caption_column not in columns:
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


def _open_media(value) -> str | io.BytesIO:
    """Something PyAV and PIL can open: a local path, or the file's bytes in memory."""
    data = value.get("bytes") if isinstance(value, dict) else value if isinstance(value, bytes) else None
    if data is not None:
        return io.BytesIO(data)
    path = _media_path(value)
    if path is None:
        raise ValueError(f"media value has neither a path nor bytes: {type(value).__name__}")
    if os.path.exists(path):
        return path
    # remote files (hf://, https://, chained URLs) from streamed Hub datasets; missing local files raise here
    with fsspec.open(path, "rb") as file:
        return io.BytesIO(file.read())


def _is_image(value, media_column: str) -> bool:
    path = _media_path(value)
    if path and os.path.splitext(path)[1]:
        return path.lower().endswith(IMAGE_EXTENSIONS)
    return media_column == "image"
