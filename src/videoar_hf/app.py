"""The Gradio demo: `build_demo(pipe)` for the Space (`examples/space/app.py`) and for `videoar app`.

Frames stream into a preview as each latent frame is sampled; the finished mp4 follows. Every limit is checked in
the server-side handler, so a request through the API meets the same limits as one from the page.
"""

import logging
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch

from .pipeline_videoar import VideoARPipeline

logger = logging.getLogger(__name__)

EXAMPLE_PROMPTS = (
    "a red circle moving left",
    "a blue square sliding to the right",
    "a yellow triangle heading upward",
    "one white disc drifting down",
)
MAX_SEED = 2**31 - 1
PREVIEW_SIDE = 256


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask for; checked on the server for every request."""

    max_frames: int = 33
    max_resolution: int = 128
    max_prompt_length: int = 200
    queue_max_size: int = 16
    concurrency_limit: int = 1
    kept_videos: int = 8  # finished mp4s kept on disk for the page to fetch; older ones are deleted
    cache_seconds: int = 600  # how long Gradio keeps its copies of inputs and outputs


class RequestError(ValueError):
    """A request outside the limits or the model's reach; the UI shows its message."""


def served_resolutions(pipe: VideoARPipeline, limits: DemoLimits) -> list[int]:
    """Square sides the pipeline serves (a scale-schedule side times the spatial compression), within the limits."""
    f = pipe.video_tokenizer.config.spatial_compression_ratio
    return sorted({side * f for side in pipe.video_tokenizer.config.scale_schedule if side * f <= limits.max_resolution})


def frame_choices(pipe: VideoARPipeline, limits: DemoLimits) -> list[int]:
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    return list(range(1, limits.max_frames + 1, tau))


def check_request(pipe: VideoARPipeline, limits: DemoLimits, prompt, negative_prompt, num_frames, resolution) -> None:
    """Raise `RequestError` naming the first input that is out of bounds."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt: type what the video should show.")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise RequestError("negative prompt: must be text.")
    for name, text in (("prompt", prompt), ("negative prompt", negative_prompt or "")):
        if len(text) > limits.max_prompt_length:
            raise RequestError(f"{name}: {len(text)} characters; at most {limits.max_prompt_length} are allowed.")
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    if num_frames not in frame_choices(pipe, limits):
        raise RequestError(f"frames: {num_frames} is not allowed; use 1 + {tau}k frames, at most {limits.max_frames}.")
    if resolution not in served_resolutions(pipe, limits):
        raise RequestError(f"resolution: {resolution} is not allowed; use one of {served_resolutions(pipe, limits)}.")


def _number(name: str, value, integer: bool = False, low: float = -math.inf, high: float = math.inf):
    """An API input as a number in [low, high], or a `RequestError` naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}: {str(value)[:40]!r} is not a number.") from None
    if not math.isfinite(number) or not low <= number <= high or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise RequestError(f"{name}: {value!r} is not allowed; use {kind} from {low:g} to {high:g}.")
    return int(number) if integer else number


def _uploaded_image(value) -> PIL.Image.Image | None:
    """The API's raw image (Gradio's file data) as an RGB image; only files Gradio itself received are read."""
    if value is None:
        return None
    from gradio.utils import get_upload_folder, is_in_or_equal

    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not is_in_or_equal(path, get_upload_folder()):
        raise RequestError("image: upload an image file.")
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        raise RequestError("image: the upload is not an image.") from None


def _keep_newest(folder: Path, count: int) -> None:
    videos = sorted(folder.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    for old in videos[:-count]:
        old.unlink(missing_ok=True)


def build_demo(pipe: VideoARPipeline, limits: DemoLimits = DemoLimits(), gpu: Callable | None = None):
    """The `gr.Blocks` app around `pipe`. `gpu` wraps the generating function (`spaces.GPU` on a ZeroGPU Space)."""
    import gradio as gr
    from diffusers.utils import export_to_video

    resolutions, frame_counts = served_resolutions(pipe, limits), frame_choices(pipe, limits)
    if not resolutions or not frame_counts:
        raise ValueError(f"`limits` {limits} leave no resolution or frame count this pipeline serves.")
    sample_size = pipe.video_tokenizer.config.sample_size
    default_resolution = sample_size if sample_size in resolutions else resolutions[-1]
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    default_frames = 17 if 17 in frame_counts else frame_counts[-1]
    default_top_p = pipe.transformer.config.top_p
    videos = Path(tempfile.mkdtemp(prefix="videoar-demo-"))

    # inputs arrive unprocessed (`preprocess=False`), so a wrong type from the API gets a message naming it; every
    # argument has a default, so the API marks only the prompt as required
    def generate(prompt, negative_prompt="", num_frames=default_frames, resolution=default_resolution, seed=0,
                 randomize_seed=True, guidance_scale=4.0, top_k=0, top_p=default_top_p, image=None, then_prompt="",
                 then_from_frame=None, progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        try:
            num_frames = _number("frames", num_frames, integer=True, low=1, high=limits.max_frames)
            resolution = _number("resolution", resolution, integer=True, low=1, high=limits.max_resolution)
            check_request(pipe, limits, prompt, negative_prompt, num_frames, resolution)
            next_prompts = _then(then_prompt, then_from_frame, num_frames, tau, limits)
            seed = random.randint(0, MAX_SEED) if randomize_seed else _number("seed", seed, integer=True, low=0, high=MAX_SEED)
            chunks = pipe.stream(
                prompt,
                negative_prompt=negative_prompt or None,
                num_frames=num_frames,
                height=resolution,
                width=resolution,
                guidance_scale=_number("guidance scale", guidance_scale, low=0, high=20),
                top_k=_number("top-k", top_k, integer=True, low=0, high=2),
                top_p=_number("top-p", top_p, low=0.01, high=1),
                image=_uploaded_image(image),
                generator=torch.Generator().manual_seed(seed),
                next_prompts=next_prompts,
            )
            frames = []
            for chunk in chunks:
                frames.extend(chunk[0])
                yield _preview(frames[-1]), None, seed
        except (RequestError, ValueError, TypeError) as error:
            logger.warning(f"rejected a request: {error}")  # one line, not a traceback
            raise gr.Error(str(error), print_exception=False) from None
        path = tempfile.NamedTemporaryFile(suffix=".mp4", dir=videos, delete=False).name
        export_to_video(frames, path, fps=8)
        _keep_newest(videos, limits.kept_videos)
        yield _preview(frames[-1]), path, seed

    if gpu is not None:
        generate = gpu(generate)

    with gr.Blocks(title="VideoAR", delete_cache=(limits.cache_seconds, limits.cache_seconds)) as demo:
        gr.Markdown(
            "# VideoAR\nAutoregressive video generation: frame after frame, scale after scale "
            "([arXiv 2601.05966](https://arxiv.org/abs/2601.05966)). The preview shows each frame as it is made."
        )
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", max_length=limits.max_prompt_length, value=EXAMPLE_PROMPTS[0])
                negative_prompt = gr.Textbox(label="Negative prompt", value="", max_length=limits.max_prompt_length)
                image = gr.Image(label="Continue from this image (optional)", type="pil")
                with gr.Row():
                    then_prompt = gr.Textbox(label="Then (optional): the video continues under this prompt",
                                             value="", max_length=limits.max_prompt_length, scale=3)  # fmt: skip
                    then_from_frame = gr.Number(value=1 + tau * (default_frames // (2 * tau)), precision=0,
                                                label="from frame", scale=1)  # fmt: skip
                with gr.Accordion("Settings", open=False):
                    num_frames = gr.Slider(1, frame_counts[-1], value=default_frames, step=tau, label="Frames")
                    resolution = gr.Dropdown(resolutions, value=default_resolution, label="Resolution (px)")
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    randomize_seed = gr.Checkbox(value=True, label="Randomize seed")
                    guidance_scale = gr.Slider(1.0, 10.0, value=4.0, step=0.5, label="Guidance scale")
                    top_k = gr.Slider(0, 2, value=0, step=1, label="Top-k per bit (0: off)")
                    top_p = gr.Slider(0.05, 1.0, value=default_top_p, step=0.05, label="Top-p per bit")
                run = gr.Button("Generate", variant="primary")
            with gr.Column():
                preview = gr.Image(label="Latest frame", interactive=False, height=320)
                video = gr.Video(label="Video", interactive=False, height=320)
                used_seed = gr.Number(label="Seed used", interactive=False)
        gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt])
        run.click(
            generate,
            inputs=[prompt, negative_prompt, num_frames, resolution, seed, randomize_seed, guidance_scale, top_k, top_p,
                    image, then_prompt, then_from_frame],  # fmt: skip
            outputs=[preview, video, used_seed],
            api_name="generate",
            preprocess=False,
            concurrency_limit=limits.concurrency_limit,
            show_progress_on=[video],  # the preview stays visible while frames stream in
        )
    demo.queue(max_size=limits.queue_max_size, default_concurrency_limit=limits.concurrency_limit)
    return demo


def _then(then_prompt, then_from_frame, num_frames: int, tau: int, limits: DemoLimits) -> list | None:
    """The pipeline's `next_prompts` for a "then" prompt: none when it is empty."""
    if then_prompt is None or (isinstance(then_prompt, str) and not then_prompt.strip()):
        return None
    if not isinstance(then_prompt, str) or len(then_prompt) > limits.max_prompt_length:
        raise RequestError(f"then: text of at most {limits.max_prompt_length} characters.")
    frame = _number("from frame", then_from_frame, integer=True, low=2, high=num_frames - 1)
    if (frame - 1) % tau:
        raise RequestError(f"from frame: {frame} does not start a latent frame; use 1 + a multiple of {tau}.")
    return [(frame, then_prompt)]


def _preview(frame: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """uint8 `frame`, enlarged by whole pixels to about `side` so a 64 px frame is not a speck on the page."""
    scale = max(1, side // max(frame.shape[:2]))
    return (np.clip(frame, 0, 1) * 255).round().astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
