"""Reading media as the model sees it: decoding videos and images upright, choosing frames by time, and the one
resize and centre-crop rule. Training (`video_data`) and inference (`videoar generate --image/--video`) both use
it, so they never disagree on what a clip looks like.

A video frame is returned as it is displayed, the way ffmpeg's player shows it: the display matrix (phone videos'
rotation and flips; the legacy `rotate` tag when there is none) is applied, and non-square pixels (a sample aspect
ratio other than 1) are resampled to the display aspect ratio. With `size`, each frame is scaled straight to the
size that covers `size` in the same swscale pass that converts it to RGB, so a 1080p source never exists as a
full-size RGB array; `frames_to_clip` then only crops.
"""

import io
from typing import NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps

# absorbs float error in frame timestamps; far below one frame interval
_TIME_TOLERANCE = 1e-4
# swscale's bilinear filter widens with the downscale factor (antialiased), like torch's antialias=True: measured
# against the torch path it gives the highest PSNR of swscale's filters (37-45 dB on natural-looking content)
_INTERPOLATION = "BILINEAR"


class VideoTiming(NamedTuple):
    """What a container's header says about time: `duration` in seconds (None when unknown) and the source's
    frame interval in seconds."""

    duration: float | None
    frame_interval: float


def probe_video(media: str | io.BytesIO) -> VideoTiming:
    """The duration and frame interval of a video from its container header, without decoding a frame."""
    with av.open(media) as container:
        stream = container.streams.video[0]
        return VideoTiming(_duration(container, stream), _frame_interval(stream))


def read_video_frames(
    media: str | io.BytesIO,
    num_frames: int,
    fps: float | None,
    rng: np.random.Generator | None = None,
    *,
    start: float | None = None,
    size: tuple[int, int] | None = None,
) -> list[np.ndarray]:
    """Up to `num_frames` upright RGB uint8 frames `(H, W, 3)` at the display aspect ratio: those on screen at
    `t0 + i / fps` (`fps=None`: the source rate). Fewer frames come back when the video ends first.

    `t0` is `start` times the latest start that keeps the clip inside the video (`start` in [0, 1]); `rng` draws
    `start` uniformly; with neither, `t0 = 0`. `size=(height, width)`: frames come back already scaled to cover
    `size` (what `frames_to_clip` would resize them to), which is much faster for large sources.
    """
    if start is None and rng is not None:
        start = float(rng.random())
    with av.open(media) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frame_interval = _frame_interval(stream)
        step = 1 / fps if fps else frame_interval
        duration = _duration(container, stream)
        offset = 0.0
        if start is not None and duration is not None:
            offset = _start_time(duration, step * (num_frames - 1), frame_interval, start)
        first_time = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        targets = first_time + offset + step * np.arange(num_frames)
        if offset > 0:
            # start decoding at the keyframe before the clip rather than at the beginning of the video
            container.seek(int(targets[0] / stream.time_base), stream=stream)
        picked = _frames_on_screen(container.decode(stream), targets, frame_interval)
        if not picked:
            return []
        display = _Display(picked[0], stream, size)
        converted = {}  # a frame shown at several targets (fps above the source's) is converted once
        for frame in picked:
            if id(frame) not in converted:
                converted[id(frame)] = display.to_rgb(frame)
        return [converted[id(frame)] for frame in picked]


def read_image_frame(media: str | io.BytesIO) -> np.ndarray:
    """An image file as one RGB uint8 frame `(H, W, 3)`, upright per its EXIF orientation."""
    with Image.open(media) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def cover_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The size a `height x width` frame is resized to so that it covers `size` (the shorter side fits), keeping
    its aspect ratio; the centre crop to `size` follows."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def frames_to_clip(frames: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 frames -> float32 `(3, T, h, w)` in [-1, 1]: resized so the frame covers `size`
    (the shorter side fits), then centre-cropped. Frames read with `size` are already covering: only cropped."""
    video_T3HW = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    height, width = size
    resized = cover_size(video_T3HW.shape[2], video_T3HW.shape[3], size)
    if resized != tuple(video_T3HW.shape[2:]):
        video_T3HW = F.interpolate(video_T3HW, size=resized, mode="bilinear", antialias=True, align_corners=False)
    top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
    video_T3HW = video_T3HW[:, :, top : top + height, left : left + width]
    return (video_T3HW / 127.5 - 1).permute(1, 0, 2, 3).contiguous()


class _Display:
    """How a stream's decoded frames become displayed RGB arrays: one swscale pass to the (display-aspect,
    possibly reduced) size in the coded orientation, then the display matrix's rotation and flips."""

    def __init__(self, frame: av.VideoFrame, stream, size: tuple[int, int] | None):
        self.orient = _orientation(frame, stream)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        height, width = frame.height, frame.width
        if sar and sar > 0 and sar != 1:
            width = max(1, round(width * sar))  # square pixels: ffmpeg's scale=iw*sar:ih
        transposed = self.orient in _TRANSPOSING
        if size is not None:
            display = (width, height) if transposed else (height, width)
            height, width = cover_size(*display, size)
            if transposed:
                height, width = width, height
        self.width, self.height = width, height
        # our own scaler, freed when the read ends: one cached on a frame (`frame.to_ndarray`) lives as long as the
        # frame, which reading `side_data` puts in a reference cycle; a forked DataLoader worker that collects it
        # then frees swscale's threads, which it does not have, and hangs or crashes
        self.scaler = VideoReformatter()

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        size = dict(width=self.width, height=self.height)
        rgb = self.scaler.reformat(frame, format="rgb24", interpolation=_INTERPOLATION, **size).to_ndarray()
        return np.ascontiguousarray(_ORIENT[self.orient](rgb)) if self.orient else rgb


# ffmpeg's autorotate (fftools), on HWC arrays; "transpose" = transpose=cclock_flip, "antitranspose" = clock_flip
_ORIENT = {
    "clock": lambda a: np.rot90(a, -1),
    "cclock": lambda a: np.rot90(a, 1),
    "transpose": lambda a: a.transpose(1, 0, 2),
    "antitranspose": lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "rotate180": lambda a: a[::-1, ::-1],
}
_TRANSPOSING = ("clock", "cclock", "transpose", "antitranspose")


def _orientation(frame: av.VideoFrame, stream) -> str | None:
    """The operation that shows `frame` upright, as `ffmpeg -autorotate` picks it (None: none needed).
    Angles that are not a multiple of 90 degrees are left alone (ffmpeg would rotate by an arbitrary angle)."""
    matrix = next((side for side in frame.side_data if side.type.name == "DISPLAYMATRIX"), None)
    if matrix is None:
        # legacy tag (old ffmpeg, Matroska): degrees clockwise
        tag = next((value for key, value in stream.metadata.items() if key.lower() == "rotate"), None)
        try:
            theta = float(tag) % 360 if tag is not None else 0.0
        except ValueError:
            return None
        return {90.0: "clock", 180.0: "rotate180", 270.0: "cclock"}.get(theta)
    m = np.frombuffer(bytes(matrix), np.int32)  # 3x3, 16.16 fixed point, FFmpeg's layout
    theta = -round(frame.rotation) % 360  # clockwise, as ffmpeg's get_rotation()
    if theta == 90:
        return "transpose" if m[3] > 0 else "clock"
    if theta == 270:
        return "antitranspose" if m[3] < 0 else "cclock"
    if theta == 180:
        return {(True, True): "rotate180", (True, False): "hflip", (False, True): "vflip"}.get((m[0] < 0, m[4] < 0))
    if theta == 0 and m[4] < 0:
        return "vflip"
    return None


def _frame_interval(stream) -> float:
    return 1 / float(stream.average_rate or stream.guessed_rate)


def _duration(container, stream) -> float | None:
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _start_time(duration: float, clip_span: float, frame_interval: float, start: float) -> float:
    # one frame of margin: container durations are often rounded up
    latest = duration - clip_span - frame_interval
    return latest * min(max(start, 0.0), 1.0) if latest > 0 else 0.0


def _frames_on_screen(frames, targets: np.ndarray, frame_interval: float) -> list:
    """For each target time, the decoded frame on screen then (the first frame for targets before it). A frame
    shows from its time until the next frame's; the last one until one frame interval later, that end included,
    so a 2.0 s clip fits a 2.0 s video."""
    picked = []
    for frame, end, is_last in _with_end(frames, frame_interval):
        while len(picked) < len(targets) and _shows_at(targets[len(picked)], end, is_last):
            picked.append(frame)
        if len(picked) == len(targets):
            break
    return picked


def _shows_at(target: float, end: float, is_last: bool) -> bool:
    return target <= end + _TIME_TOLERANCE if is_last else target < end - _TIME_TOLERANCE


def _with_end(frames, frame_interval: float):
    """Yield `(frame, time it stops showing, whether it is the last)`; the last frame lasts one frame interval."""
    previous = None
    for frame in frames:
        if previous is not None:
            yield previous, frame.time, False
        previous = frame
    if previous is not None:
        yield previous, previous.time + frame_interval, True
