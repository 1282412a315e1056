"""`videoar` command line: `videoar generate "a red circle moving left" -o out.mp4`, `videoar eval`, `videoar app`."""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .atomic_directory import under_umask

VIDEO_EXTENSIONS = (".mp4", ".gif")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoar", description="VideoAR: autoregressive video generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="Generate a video from a prompt.")
    gen.add_argument("prompt", help="What the video shows.")
    gen.add_argument("-o", "--output", default="out.mp4", help="Output file, .mp4 or .gif (default: out.mp4).")
    gen.add_argument(
        "--model",
        default=None,
        help="Pipeline folder or Hub repo id. Default: the VideoAR-Shapes model shipped with the package, or, where "
        "none is installed, a tiny randomly initialised pipeline that shows the pipeline runs but makes noise.",
    )
    gen.add_argument("--num-frames", type=int, default=17, help="Pixel frames, 1 + 4k for the default tokenizer.")
    gen.add_argument("--height", type=int, default=None, help="Pixel height (default: the model's sample size).")
    gen.add_argument("--width", type=int, default=None, help="Pixel width (default: the model's sample size).")
    gen.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    gen.add_argument(
        "--guidance-scale",
        default="text-to-video",
        help="A number, or a schedule name: text-to-video (5 -> 3, default) or class-conditional.",
    )
    gen.add_argument("--top-k", type=int, default=0, help="Per-bit top-k; 0 disables it, 1 is greedy.")
    gen.add_argument("--top-p", type=float, default=1.0, help="Per-bit top-p in (0, 1].")
    gen.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature, > 0.")
    gen.add_argument("--fps", type=int, default=8, help="Frames per second of the output file (default: 8).")
    given = gen.add_mutually_exclusive_group()
    given.add_argument("--image", default=None, help="Continue from this image (image-to-video).")
    given.add_argument("--video", default=None, help="Continue this video; its first 1 + 4k frames are used.")
    gen.add_argument("--gif", action="store_true", help="Also write a GIF beside the output.")
    gen.add_argument(
        "--stream", action="store_true", help="Decode frames as soon as each is sampled and report them on stderr."
    )
    gen.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="A LoRA adapter (PEFT folder or Hub repo id) with an optional weight (default 1); repeat to combine.",
    )

    ev = commands.add_parser("eval", help="Measure a model on Shapes prompts against the Shapes ground truth.")
    ev.add_argument("--model", default=None, help="Pipeline folder or Hub repo id (default: as for generate).")
    ev.add_argument("-o", "--output-dir", default="eval", help="Where metrics.json, metrics.md and samples.png go.")
    ev.add_argument("--suites", nargs="+", default=None,
                    help="Any of: train, held_out, continuation, tokenizer, new_colours (default: all but new_colours, "
                    "which runs when --new-colours is given).")  # fmt: skip
    ev.add_argument("--new-colours", nargs="+", default=[], metavar="NAME=R,G,B",
                    help="Colours a finetune added, e.g. orange=255,128,0: known to every suite, prompted by new_colours.")
    ev.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="As for generate.")
    ev.add_argument("--num-prompts", type=int, default=100, help="Prompts of the train and continuation suites.")
    ev.add_argument("--seeds-per-held-out", type=int, default=20, help="Seeds per held-out triple.")
    ev.add_argument("--num-frames", type=int, default=17, help="Frames per generated video.")
    ev.add_argument("--resolution", type=int, default=64, help="Pixel side of generated videos.")
    ev.add_argument("--guidance-scale", default=None, help="A number or a schedule name (default: the pipeline's).")
    ev.add_argument("--batch-size", type=int, default=8, help="Videos generated per pipeline call.")

    app = commands.add_parser("app", help="Run the Gradio demo (the Space) locally.")
    app.add_argument("--model", default=None, help="Pipeline folder or Hub repo id (default: as for generate).")
    app.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1, this machine).")
    app.add_argument("--port", type=int, default=7860, help="Port (default: 7860).")
    return parser


def _guidance(value: str):
    try:
        return float(value)
    except ValueError:
        return value  # a schedule name; the pipeline validates it


def _load_pipeline(model: str | None):
    import torch

    from .pipeline_videoar import VideoARPipeline

    if model is None:
        from .shipped_model import shipped_model_path

        try:
            model = str(shipped_model_path())
        except FileNotFoundError:
            from .testing_utils import tiny_pipeline

            print(
                "videoar: no model given and no trained model ships with this installation: using a tiny RANDOMLY "
                "INITIALISED pipeline. The video will be noise; pass --model PATH_OR_REPO_ID for a trained one.",
                file=sys.stderr,
            )
            pipe = tiny_pipeline(sample_size=64, scale_schedule=(1, 2, 4, 8))
            pipe.set_progress_bar_config(disable=False)
            return pipe
    if not os.path.isdir(model) and model.count("/") != 1:
        raise UsageError(f"--model {model!r} is neither a folder nor a Hub repo id (org/name).")
    try:
        return VideoARPipeline.from_pretrained(model, dtype=torch.float32)
    except ValueError as error:
        raise UsageError(f"--model {model!r}: {error}") from error
    except OSError as error:
        raise UsageError(f"--model {model!r} could not be loaded: {error}") from error


def _parse_lora(value: str) -> tuple[str, float]:
    """`PATH[:SCALE]`: the text after the last colon is the scale when it is a number."""
    path, _, scale = value.rpartition(":")
    if path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return value, 1.0


def _load_loras(pipe, values: list[str]) -> None:
    if not values:
        return
    names, scales = [], []
    for i, value in enumerate(values):
        path, scale = _parse_lora(value)
        try:
            pipe.load_lora_weights(path, adapter_name=f"lora_{i}")
        except ValueError as error:
            raise UsageError(f"--lora {value!r}: {error}") from error
        names.append(f"lora_{i}")
        scales.append(scale)
    try:
        pipe.set_adapters(names, scales)
    except ValueError as error:
        raise UsageError(f"--lora: {error}") from error


def _write_video(frames, output: Path, fps: int) -> None:
    """Write to a temporary file beside `output`, then rename: a failed run never leaves half a file."""
    import PIL.Image
    from diffusers.utils import export_to_gif, export_to_video

    fd, tmp = tempfile.mkstemp(suffix=output.suffix, dir=output.parent, prefix=f".{output.name}.")
    os.close(fd)
    try:
        if output.suffix.lower() == ".gif":
            export_to_gif([PIL.Image.fromarray((frame * 255).round().astype("uint8")) for frame in frames], tmp, fps=fps)
        else:
            export_to_video(list(frames), tmp, fps=fps)
        os.chmod(tmp, under_umask(0o666))  # mkstemp creates 0600; give the file the user's usual permissions
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_conditioning(args, temporal_compression: int):
    """The `--image` / `--video` frames for the pipeline, or None; unreadable files are a usage error."""
    if args.image is None and args.video is None:
        return {}
    path = args.image or args.video
    flag = "--image" if args.image else "--video"
    try:
        if args.image:
            import PIL.Image

            with PIL.Image.open(path) as image:
                return {"image": image.convert("RGB")}
        import imageio.v3 as iio

        frames = iio.imread(path, index=None, plugin="FFMPEG")
    except Exception as error:  # PIL and ffmpeg raise many types for a missing, empty or broken file
        raise UsageError(f"{flag} {path!r} cannot be read: {error}") from error
    usable = 1 + (len(frames) - 1) // temporal_compression * temporal_compression
    return {"video": [frame for frame in frames[:usable]]}


def _stream(pipe, prompt: str, options: dict):
    """The video's frames, gathered from `pipe.stream`, with a line on stderr as each latent frame's pixel frames
    arrive."""
    import numpy as np

    chunks, done = [], 0
    for chunk in pipe.stream(prompt, **options):
        chunks.append(chunk[0])
        print(f"videoar: frames {done + 1}-{done + len(chunk[0])} of {options['num_frames']} ready", file=sys.stderr)
        done += len(chunk[0])
    return np.concatenate(chunks)


def generate(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    if output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise UsageError(f"--output {str(output)!r}: unsupported extension; use one of {list(VIDEO_EXTENSIONS)}.")
    if not output.parent.exists() or not os.access(output.parent, os.W_OK):
        raise UsageError(f"--output {str(output)!r}: the folder {str(output.parent)!r} does not exist or is not writable.")
    if args.fps < 1:
        raise UsageError(f"--fps must be >= 1, got {args.fps}.")

    import torch

    pipe = _load_pipeline(args.model)
    _load_loras(pipe, args.lora)
    conditioning = _read_conditioning(args, pipe.video_tokenizer.config.temporal_compression_ratio)
    options = dict(
        **conditioning,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        guidance_scale=_guidance(args.guidance_scale),
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        generator=torch.Generator().manual_seed(args.seed),
    )
    try:
        frames = _stream(pipe, args.prompt, options) if args.stream else pipe(args.prompt, **options).frames[0]
    except ValueError as error:
        raise UsageError(str(error)) from error
    _write_video(frames, output, args.fps)
    if args.gif and output.suffix.lower() != ".gif":
        _write_video(frames, output.with_suffix(".gif"), args.fps)
    return output


def evaluate(args: argparse.Namespace) -> str:
    from .evaluation import metrics_markdown, run_evaluation
    from .shapes import parse_colour

    for flag in ("num_prompts", "seeds_per_held_out", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    try:
        new_colours = dict(parse_colour(spec) for spec in args.new_colours)
    except ValueError as error:
        raise UsageError(f"--new-colours: {error}") from error
    pipe = _load_pipeline(args.model)
    _load_loras(pipe, args.lora)
    pipe.set_progress_bar_config(disable=True)  # the evaluator's bar counts videos; the pipeline's would print per batch
    guidance = None if args.guidance_scale is None else _guidance(args.guidance_scale)
    try:
        report = run_evaluation(
            pipe, args.output_dir, suites=args.suites, new_colours=new_colours, num_prompts=args.num_prompts,
            seeds_per_held_out=args.seeds_per_held_out, num_frames=args.num_frames, resolution=args.resolution,
            guidance_scale=guidance, batch_size=args.batch_size,
        )  # fmt: skip
    except ValueError as error:
        raise UsageError(str(error)) from error
    return metrics_markdown(report)


def run_app(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}.")
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise UsageError(f"the demo needs gradio: pip install 'videoar-hf[app]' ({error}).") from error
    from .app import build_demo

    pipe = _load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=False)
    try:
        build_demo(pipe).launch(server_name=args.host, server_port=args.port)
    except OSError as error:  # the port is taken, or the host cannot be bound
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            print(generate(args))
        elif args.command == "eval":
            print(evaluate(args))
        elif args.command == "app":
            run_app(args)
    except UsageError as error:
        print(f"videoar: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
