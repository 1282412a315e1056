"""Training clips per second from 720p and 1080p H.264 sources: the full-size path (decode, convert every picked
frame to full-size RGB, resize in torch) against the reduced-size path `video_data` uses (`read_video_frames(...,
size=...)`: swscale converts and scales each frame to the covering size in one pass), and the PSNR between them.

    python benchmarks/loader.py [--output-dir benchmarks/results] [--clips 8]

Both paths read the same clips (17 frames at 8 fps, centre-cropped to 128x128, seeded random windows), alternating
clip by clip in one process, so the ratio holds on a shared, noisy machine. torch runs on one thread, as in a
DataLoader worker. The sources are made here: 6 s at 30 fps, a keyframe every 2 s, smooth moving shapes with a
little texture, libx264 `veryfast`. Writes `loader.json` and `loader.md`.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from videoar_hf.media import frames_to_clip, read_video_frames

SOURCES = {"720p": (720, 1280), "1080p": (1080, 1920)}
CLIP = dict(num_frames=17, fps=8, size=(128, 128))


def make_source(path: str, height: int, width: int, seconds: int = 6, fps: int = 30) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    # coarse texture (4x4 blocks), so the encoder has detail to code but the picture is not noise
    texture = rng.normal(0, 10, (height // 4, (width + 512) // 4)).astype(np.float32).repeat(4, 0).repeat(4, 1)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", "g": "60"})
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(seconds * fps):
            base = 110 + 60 * np.sin((x + 5 * t) / width * 9) * np.cos(y / height * 5)
            frame = np.stack([base, 255 - base, 0.5 * base + 60], -1) + texture[:, 2 * t : 2 * t + width, None]
            frame[(x - width * (0.2 + 0.004 * t)) ** 2 + (y - height / 2) ** 2 < (height / 6) ** 2] = (230, 40, 40)
            frame[int(height * 0.1) : int(height * 0.3), int(width * 0.6) : int(width * 0.8)] = (20, 20, 200)
            image = np.clip(frame, 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def full_size_clip(path: str, start: float) -> torch.Tensor:
    frames = read_video_frames(path, CLIP["num_frames"], CLIP["fps"], start=start)
    return frames_to_clip(frames, CLIP["size"])


def reduced_size_clip(path: str, start: float) -> torch.Tensor:
    frames = read_video_frames(path, CLIP["num_frames"], CLIP["fps"], start=start, size=CLIP["size"])
    return frames_to_clip(frames, CLIP["size"])


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * float(np.log10(4 / float(((a - b) ** 2).mean())))  # clips span [-1, 1]


def measure(path: str, clips: int) -> dict:
    starts = np.random.default_rng(0).random(clips)
    full_size_clip(path, 0.5), reduced_size_clip(path, 0.5)  # warm-up: libraries' first-call setup
    seconds = {"full_size": 0.0, "reduced_size": 0.0}
    psnrs = []
    for start in starts:
        clips_read = {}
        for name, read in (("full_size", full_size_clip), ("reduced_size", reduced_size_clip)):
            began = time.perf_counter()
            clips_read[name] = read(path, start)
            seconds[name] += time.perf_counter() - began
        psnrs.append(psnr_db(clips_read["full_size"], clips_read["reduced_size"]))
    return {
        "full_size_clips_per_s": clips / seconds["full_size"],
        "reduced_size_clips_per_s": clips / seconds["reduced_size"],
        "ratio": seconds["full_size"] / seconds["reduced_size"],
        "psnr_db_min": min(psnrs),
    }


def loader_section(clips: int = 8) -> dict:
    """Clips per second, full-size against reduced-size path, per source resolution (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = {}
            for name, (height, width) in SOURCES.items():
                path = os.path.join(folder, f"{name}.mp4")
                make_source(path, height, width)
                out[name] = measure(path, clips)
            return out
    finally:
        torch.set_num_threads(threads)


def markdown(results: dict) -> str:
    rows = ["| source | full-size path, clips/s | reduced-size path, clips/s | speed-up | PSNR between them (min) |",
            "|---|---|---|---|---|"]  # fmt: skip
    rows += [
        f"| {name} | {r['full_size_clips_per_s']:.2f} | {r['reduced_size_clips_per_s']:.2f} | {r['ratio']:.2f}x | "
        f"{r['psnr_db_min']:.1f} dB |"
        for name, r in results.items()
    ]
    clip = f"{CLIP['num_frames']} frames at {CLIP['fps']} fps, {CLIP['size'][0]}x{CLIP['size'][1]}"
    return "\n".join(rows) + f"\n\n- Clip: {clip}; one torch thread; {os.cpu_count()} CPUs, PyAV {av.__version__}.\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--clips", type=int, default=8, help="Clips read per path and source.")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error(f"--clips must be >= 1, got {args.clips}.")
    results = loader_section(args.clips)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "loader.json").write_text(json.dumps(results, indent=2))
    (output / "loader.md").write_text(markdown(results))
    print(markdown(results), file=sys.stdout)
    return results


if __name__ == "__main__":
    main()
