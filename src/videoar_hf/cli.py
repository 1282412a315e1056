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


MAX_MESSAGE = 500  # characters of an error on the one line the CLI prints


def one_line(error: BaseException | str) -> str:
    """The first non-empty line of an error, shortened: libraries' messages (ffmpeg, the Hub) run to paragraphs."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError here into its one-line usage error
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**64 - 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage too; we print one line
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="videoar", description="VideoAR: autoregressive video generation.")
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
    gen.add_argument("--num-frames", type=positive_int, default=17, help="Pixel frames, 1 + 4k for the default tokenizer.")
    gen.add_argument("--height", type=positive_int, default=None, help="Pixel height (default: the model's sample size).")
    gen.add_argument("--width", type=positive_int, default=None, help="Pixel width (default: the model's sample size).")
    gen.add_argument("--seed", type=seed, default=0, help="Random seed (default: 0).")
    gen.add_argument(
        "--guidance-scale",
        default="text-to-video",
        help="A number, or a schedule name: text-to-video (5 -> 3, default) or class-conditional.",
    )
    gen.add_argument("--top-k", type=non_negative_int, default=0, help="Per-bit top-k; 0 disables it, 1 is greedy.")
    gen.add_argument("--top-p", type=float, default=None, help="Per-bit top-p in (0, 1] (default: the model's config).")
    gen.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature, > 0.")
    gen.add_argument("--history-guidance-scale", type=float, default=None,
                     help="Weight of the long history against the last --history-frames latent frames; 1 is off "
                     "(default: the model's config).")
    gen.add_argument("--history-frames", type=non_negative_int, default=None,
                     help="Latent frames the short history branch sees (default: the model's config).")
    gen.add_argument("--history-guidance-start", type=non_negative_int, default=None,
                     help="First latent frame sampled with history guidance (default: the model's config).")
    gen.add_argument("--fps", type=positive_int, default=8,
                     help="Frames per second of the output file, and of the frames read from --video (default: 8).")
    given = gen.add_mutually_exclusive_group()
    given.add_argument("--image", default=None,
                       help="Continue from this image (image-to-video), resized and centre-cropped as in training.")
    given.add_argument("--video", default=None,
                       help="Continue this video: up to --num-frames minus 4 of its first frames (1 + 4k), read at --fps, "
                       "resized and centre-cropped as in training.")
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
                    help="Any of: train, held_out, continuation, tokenizer, paraphrases, long, new_colours (default: all "
                    "but new_colours, which runs when --new-colours is given).")  # fmt: skip
    ev.add_argument("--new-colours", nargs="+", default=[], metavar="NAME=R,G,B",
                    help="Colours a finetune added, e.g. orange=255,128,0: known to every suite, prompted by new_colours.")
    ev.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="As for generate.")
    ev.add_argument("--num-prompts", type=positive_int, default=100, help="Prompts of the train and continuation suites.")
    ev.add_argument("--seeds-per-held-out", type=positive_int, default=20, help="Seeds per held-out triple.")
    ev.add_argument("--num-frames", type=positive_int, default=17, help="Frames per generated video.")
    ev.add_argument("--long-prompts", type=positive_int, default=50, help="Prompts of the long suite.")
    ev.add_argument("--long-num-frames", type=positive_int, default=129, help="Frames per video of the long suite (1 + 4k).")
    ev.add_argument("--resolution", type=positive_int, default=64, help="Pixel side of generated videos.")
    ev.add_argument("--guidance-scale", default=None, help="A number or a schedule name (default: the pipeline's).")
    ev.add_argument("--batch-size", type=positive_int, default=8, help="Videos generated per pipeline call.")

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
    from huggingface_hub.errors import StrictDataclassError

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
    if not os.path.isdir(model) and (model.count("/") != 1 or model.startswith((".", "/")) or os.path.exists(model)):
        raise UsageError(f"--model {model!r} is neither a folder nor a Hub repo id (org/name).")
    try:
        return VideoARPipeline.from_pretrained(model, dtype=torch.float32)
    except OSError as error:
        from huggingface_hub.constants import HF_HUB_OFFLINE

        if not os.path.isdir(model) and HF_HUB_OFFLINE:
            raise UsageError(f"--model {model!r}: no such folder, and that Hub repo is not in the local cache "
                             "(offline: HF_HUB_OFFLINE is set).") from error  # fmt: skip
        raise UsageError(f"--model {model!r} could not be loaded: {one_line(error)}") from error
    except (ValueError, TypeError, KeyError, RuntimeError, StrictDataclassError) as error:  # bad configs or weights
        raise UsageError(f"--model {model!r}: {one_line(error)}") from error


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
            raise UsageError(f"--lora {value!r}: {one_line(error)}") from error
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


def _read_conditioning(args, pipe) -> dict:
    """The `--image` / `--video` frames for the pipeline: decoded upright, at `--fps`, only as many as are used, and
    resized and centre-cropped to the video's size as in training (`media.frames_to_clip`)."""
    if args.image is None and args.video is None:
        return {}
    from .media import frames_to_clip, read_image_frame, read_video_frames

    path, flag = (args.image, "--image") if args.image else (args.video, "--video")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r}: no such file.")
    tau = pipe.video_tokenizer.config.temporal_compression_ratio
    size = pipe.video_tokenizer.config.sample_size
    try:
        if args.image:
            frames = [read_image_frame(path)]
        else:  # the video must leave at least its last latent frame to be generated
            frames = read_video_frames(path, max(1, args.num_frames - tau), fps=args.fps)
    except Exception as error:  # PIL and PyAV raise many types for a missing, empty or broken file
        kind = "an image" if args.image else "a video"
        raise UsageError(f"{flag} {path!r} cannot be read as {kind}: {one_line(error)}") from error
    if not frames:
        raise UsageError(f"{flag} {path!r} has no frames.")
    frames = frames[: 1 + (len(frames) - 1) // tau * tau]  # 1 + tau * k
    clip_3THW = frames_to_clip(frames, (args.height or size, args.width or size))
    frames_T3HW = ((clip_3THW + 1) / 2).clamp(0, 1).permute(1, 0, 2, 3)
    return {"image": frames_T3HW[0]} if args.image else {"video": frames_T3HW}


def _check_writable(output: Path, flag: str) -> None:
    """Fail now, not after generating: the output must be a file path in a folder this process can write to."""
    if output.is_dir():
        raise UsageError(f"{flag} {str(output)!r} is a folder; give a file name.")
    if not output.parent.is_dir():
        raise UsageError(f"{flag} {str(output)!r}: the folder {str(output.parent)!r} does not exist.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"{flag} {str(output)!r}: cannot write there ({one_line(error)}).") from error


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
    _check_writable(output, "--output")
    if args.gif and output.suffix.lower() != ".gif":
        _check_writable(output.with_suffix(".gif"), "--gif")

    import torch

    pipe = _load_pipeline(args.model)
    _load_loras(pipe, args.lora)
    conditioning = _read_conditioning(args, pipe)
    options = dict(
        **conditioning,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        guidance_scale=_guidance(args.guidance_scale),
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        history_guidance_scale=args.history_guidance_scale,
        history_frames=args.history_frames,
        history_guidance_start=args.history_guidance_start,
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

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UsageError(f"--output-dir {args.output_dir!r} is a file; give a folder.")
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
            seeds_per_held_out=args.seeds_per_held_out, num_frames=args.num_frames, long_prompts=args.long_prompts,
            long_num_frames=args.long_num_frames, resolution=args.resolution,
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


def _quiet_libraries() -> None:
    """Keep stderr for this command's own lines: no bars while the model loads (generation keeps its own)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            print(generate(args))
        elif args.command == "eval":
            print(evaluate(args))
        elif args.command == "app":
            run_app(args)
    except UsageError as error:
        print(f"videoar: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outputs are written by rename, so nothing half-written is left
        print("videoar: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
