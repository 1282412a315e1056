"""The Gradio demo: `build_demo(pipe)` for the Space (`examples/space/app.py`) and for `videoar app`.

Frames stream into a preview as each latent frame is sampled; the finished mp4 follows. Every limit is checked in
the server-side handler, so a request through the API meets the same limits as one from the page.
"""

import random
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .pipeline_videoar import VideoARPipeline

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


class RequestError(ValueError):
    """A request outside the limits or the model's reach; the UI shows its message."""


def check_request(pipe: VideoARPipeline, limits: DemoLimits, prompt, negative_prompt, num_frames, resolution) -> None:
    """Raise `RequestError` naming the first input that is out of bounds."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt: type what the video should show.")
    for name, text in (("prompt", prompt), ("negative prompt", negative_prompt or "")):
        if len(text) > limits.max_prompt_length:
            raise RequestError(f"{name}: {len(text)} characters; at most {limits.max_prompt_length} are allowed.")
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    if not isinstance(num_frames, (int, float)) or not 1 <= num_frames <= limits.max_frames or (num_frames - 1) % tau:
        raise RequestError(f"frames: {num_frames} is not allowed; use 1 + {tau}k frames, at most {limits.max_frames}.")
    f = pipe.video_tokenizer.config.spatial_compression_ratio
    if not isinstance(resolution, (int, float)) or not f <= resolution <= limits.max_resolution or resolution % f:
        raise RequestError(
            f"resolution: {resolution} is not allowed; use a multiple of {f} from {f} to {limits.max_resolution}."
        )


def build_demo(pipe: VideoARPipeline, limits: DemoLimits = DemoLimits(), gpu: Callable | None = None):
    """The `gr.Blocks` app around `pipe`. `gpu` wraps the generating function (`spaces.GPU` on a ZeroGPU Space)."""
    import gradio as gr
    from diffusers.utils import export_to_video

    default_resolution = pipe.video_tokenizer.config.sample_size
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    f = pipe.video_tokenizer.config.spatial_compression_ratio
    default_frames = min(17, 1 + (limits.max_frames - 1) // tau * tau)

    def generate(prompt, negative_prompt, num_frames, resolution, seed, randomize_seed, guidance_scale, top_k, top_p,
                 image, progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        try:
            num_frames, resolution = int(num_frames), int(resolution)
            check_request(pipe, limits, prompt, negative_prompt, num_frames, resolution)
            seed = random.randint(0, MAX_SEED) if randomize_seed else int(seed)
            chunks = pipe.stream(
                prompt,
                negative_prompt=negative_prompt or None,
                num_frames=num_frames,
                height=resolution,
                width=resolution,
                guidance_scale=float(guidance_scale),
                top_k=int(top_k),
                top_p=float(top_p),
                image=None if image is None else image.convert("RGB"),
                generator=torch.Generator().manual_seed(seed),
            )
            frames = []
            for chunk in chunks:
                frames.extend(chunk[0])
                yield _preview(frames[-1]), None, seed
        except (RequestError, ValueError, TypeError) as error:
            raise gr.Error(str(error)) from error
        path = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False).name
        export_to_video(frames, path, fps=8)
        yield _preview(frames[-1]), path, seed

    if gpu is not None:
        generate = gpu(generate)

    with gr.Blocks(title="VideoAR") as demo:
        gr.Markdown(
            "# VideoAR\nAutoregressive video generation: frame after frame, scale after scale "
            "([arXiv 2601.05966](https://arxiv.org/abs/2601.05966)). The preview shows each frame as it is made."
        )
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", max_length=limits.max_prompt_length, value=EXAMPLE_PROMPTS[0])
                negative_prompt = gr.Textbox(label="Negative prompt", max_length=limits.max_prompt_length)
                image = gr.Image(label="Continue from this image (optional)", type="pil")
                with gr.Accordion("Settings", open=False):
                    num_frames = gr.Slider(1, limits.max_frames, value=default_frames, step=tau, label="Frames")
                    resolution = gr.Slider(
                        f, limits.max_resolution, value=min(default_resolution, limits.max_resolution), step=f,
                        label="Resolution",
                    )  # fmt: skip
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                    randomize_seed = gr.Checkbox(value=True, label="Randomize seed")
                    guidance_scale = gr.Slider(1.0, 10.0, value=4.0, step=0.5, label="Guidance scale")
                    top_k = gr.Slider(0, 2, value=0, step=1, label="Top-k per bit (0: off)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p per bit")
                run = gr.Button("Generate", variant="primary")
            with gr.Column():
                preview = gr.Image(label="Latest frame", interactive=False, height=320)
                video = gr.Video(label="Video", interactive=False, height=320)
                used_seed = gr.Number(label="Seed used", interactive=False)
        gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt])
        run.click(
            generate,
            inputs=[prompt, negative_prompt, num_frames, resolution, seed, randomize_seed, guidance_scale, top_k, top_p,
                    image],  # fmt: skip
            outputs=[preview, video, used_seed],
            api_name="generate",
            concurrency_limit=limits.concurrency_limit,
            show_progress_on=[video],  # the preview stays visible while frames stream in
        )
    demo.queue(max_size=limits.queue_max_size, default_concurrency_limit=limits.concurrency_limit)
    return demo


def _preview(frame: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """uint8 `frame`, enlarged by whole pixels to about `side` so a 64 px frame is not a speck on the page."""
    scale = max(1, side // max(frame.shape[:2]))
    return (np.clip(frame, 0, 1) * 255).round().astype(np.uint8).repeat(scale, axis=0).repeat(scale, axis=1)
