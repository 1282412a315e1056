"""Reading media as the model sees it: decoding videos and images, choosing frames by time, and the one resize and
centre-crop rule. Training (`video_data`) and inference (`videoar generate --image/--video`) both use it, so they
never disagree on what a clip looks like."""

import io

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

# absorbs float error in frame timestamps; far below one frame interval
_TIME_TOLERANCE = 1e-4


def read_video_frames(
    media: str | io.BytesIO, num_frames: int, fps: float | None, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Up to `num_frames` RGB uint8 frames `(H, W, 3)`: those on screen at `t0 + i / fps` (`fps=None`: the
    source rate). `t0` is 0 without `rng`, else uniform over the starts that keep the clip inside the video.
    Fewer frames come back when the video ends first."""
    with av.open(media) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frame_interval = 1 / float(stream.average_rate or stream.guessed_rate)
        step = 1 / fps if fps else frame_interval
        duration = _duration(container, stream)
        start = 0.0
        if rng is not None and duration is not None:
            start = _random_start(duration, step * (num_frames - 1), frame_interval, rng)
        first_time = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        targets = first_time + start + step * np.arange(num_frames)
        if start > 0:
            # start decoding at the keyframe before the clip rather than at the beginning of the video
            container.seek(int(targets[0] / stream.time_base), stream=stream)
        picked = _frames_on_screen(container.decode(stream), targets, frame_interval)
        return [frame.to_ndarray(format="rgb24") for frame in picked]


def read_image_frame(media: str | io.BytesIO) -> np.ndarray:
    """An image file as one RGB uint8 frame `(H, W, 3)`, upright per its EXIF orientation."""
    with Image.open(media) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def frames_to_clip(frames: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """RGB uint8 frames -> float32 `(3, T, h, w)` in [-1, 1]: resized so the frame covers `size`
    (the shorter side fits), then centre-cropped."""
    video_T3HW = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    height, width = size
    scale = max(height / video_T3HW.shape[2], width / video_T3HW.shape[3])
    resized = (max(height, round(video_T3HW.shape[2] * scale)), max(width, round(video_T3HW.shape[3] * scale)))
    video_T3HW = F.interpolate(video_T3HW, size=resized, mode="bilinear", antialias=True, align_corners=False)
    top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
    video_T3HW = video_T3HW[:, :, top : top + height, left : left + width]
    return (video_T3HW / 127.5 - 1).permute(1, 0, 2, 3).contiguous()


def _duration(container, stream) -> float | None:
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _random_start(duration: float, clip_span: float, frame_interval: float, rng: np.random.Generator) -> float:
    # one frame of margin: container durations are often rounded up
    latest = duration - clip_span - frame_interval
    return float(rng.uniform(0, latest)) if latest > 0 else 0.0


def _frames_on_screen(frames, targets: np.ndarray, frame_interval: float) -> list:
    """For each target time, the decoded frame on screen then (the first frame for targets before it)."""
    picked = []
    for frame, next_start in _with_next_start(frames, frame_interval):
        while len(picked) < len(targets) and targets[len(picked)] < next_start - _TIME_TOLERANCE:
            picked.append(frame)
        if len(picked) == len(targets):
            break
    return picked


def _with_next_start(frames, frame_interval: float):
    """Yield `(frame, time the next frame starts)`; the last frame lasts one frame interval."""
    previous = None
    for frame in frames:
        if previous is not None:
            yield previous, frame.time
        previous = frame
    if previous is not None:
        yield previous, previous.time + frame_interval
