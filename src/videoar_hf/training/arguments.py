"""What the training scripts share on the command line: the flags, their checks, the `Accelerator` and how a script
runs (one line and exit status 2 for bad input, never a traceback)."""

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed

from .curriculum import Stage, load_stages
from .data import DataOptions
from .shapes_options import add_shapes_arguments, shapes_options_from_args
from .trainer import NonFiniteLossError, TrainingConfig

logger = logging.getLogger(__name__)


def run_script(prog: str, main, parse_args) -> None:
    """Run a training script as the `videoar` command runs: bad input (a missing dataset, a wrong option) is one line
    on stderr and exit status 2, a non-finite loss exit 1, Ctrl-C one line and 130; never a traceback for these."""
    from ..cli import one_line

    try:
        main(parse_args())
    except NonFiniteLossError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # checkpoints are written atomically: the last complete one stays usable
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def add_training_args(parser, learning_rate: float, resolution: int = 64, num_frames: int = 17) -> None:
    """The data, curriculum, optimization and output flags every training script takes."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="shapes", help="'shapes' (synthetic), a local videofolder (metadata.csv/jsonl with file_name and text), a saved `datasets` folder, or a Hub dataset id.")
    data.add_argument("--dataset_config_name", default=None, help="Config name of a Hub dataset.")
    data.add_argument("--split", default="train", help="Dataset split.")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it whole; each process reads its own shard.")
    data.add_argument("--image_dataset", default=None, help="Images for stages with image_ratio > 0, as 1-frame videos (default: --dataset at 1 frame).")
    data.add_argument("--fps", type=float, default=8.0, help="Frame rate clips are sampled at from real videos.")
    data.add_argument("--clips_per_video", type=clips_per_video, default=1, help="Clips drawn from each video per epoch, each from its own part of the video, or 'auto': as many as the video's length holds (a few long videos hold many clips).")
    data.add_argument("--short_videos", default="skip", choices=["skip", "pad"], help="Videos shorter than a clip: skip them, or pad them with their last frame when at least half the clip exists.")
    data.add_argument("--dataloader_num_workers", type=int, default=None, help="DataLoader worker processes (default: the cores a process can spare, at most 4; 0 for --streaming, whose resume is exact only without workers).")
    data.add_argument("--label_column", default=None, help="Train a class-conditional model on this column's classes ('label' for a videofolder whose sub-folders are the classes; 'triple' for Shapes) instead of captions.")
    add_shapes_arguments(parser)

    stages = parser.add_argument_group("curriculum: a --stages file, or one stage from the flags below (docs/method.md §7)")
    stages.add_argument("--stages", default=None, help="YAML or JSON stage file; each stage: name, resolution, num_frames, steps, batch_size, learning_rate, image_ratio, warmup_steps.")
    stages.add_argument("--resolution", type=int, default=resolution, help="Pixel side of the single stage.")
    stages.add_argument("--num_frames", type=int, default=num_frames, help="Frames per clip of the single stage (1 + 4k).")
    stages.add_argument("--max_train_steps", type=int, default=1000, help="Optimizer steps of the single stage.")
    stages.add_argument("--train_batch_size", type=int, default=8, help="Global batch of the single stage, split across processes (a multiple of their number).")
    stages.add_argument("--learning_rate", type=float, default=learning_rate, help="Peak learning rate of the single stage.")
    stages.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps of the single stage; cosine decay after.")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1 (docs/method.md §7: 0.9).")
    optim.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2 (docs/method.md §7: 0.95).")
    optim.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay (docs/method.md §7: 0.05).")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    optim.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"], help="bf16 on CPU or GPU; fp16 on GPU only.")
    optim.add_argument("--gradient_checkpointing", action="store_true", help="Recompute activations in backward to save memory.")
    optim.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; samples and the saved model use it.")
    optim.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay.")
    optim.add_argument("--seed", type=int, default=0, help="Seed of everything random.")

    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True, help="Checkpoints, samples, logs, history.json, loss_curve.png and the final model.")
    out.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable state every N optimizer steps.")
    out.add_argument("--checkpoints_total_limit", type=int, default=3, help="Keep at most this many checkpoints.")
    out.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder.")
    out.add_argument("--allow_inexact_resume", action="store_true",
                     help="Resume even if the checkpoint's random-number state is unreadable (with a warning); the run "
                     "then no longer repeats an uninterrupted one.")  # fmt: skip
    out.add_argument("--report_to", default="tensorboard", choices=["tensorboard", "none"], help="Tracker for loss and learning rate.")
    out.add_argument("--logging_steps", type=int, default=10, help="Log every N optimizer steps.")


def clips_per_video(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or 'auto', got {value!r}")
    return int(value)


def check_training_args(parser, args) -> None:
    """Reject bad flags before anything is loaded; `parser.error` prints one line and exits with status 2."""
    for name in ("checkpointing_steps", "gradient_accumulation_steps", "logging_steps", "checkpoints_total_limit"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.dataloader_num_workers is not None and args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}.")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        parser.error("--mixed_precision fp16 needs a GPU (fp16 matmuls are ~100x slower on CPU); use bf16 or no.")
    if not 0 < args.ema_decay < 1:
        parser.error(f"--ema_decay must be in (0, 1), got {args.ema_decay}.")
    try:
        training_config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))


def stages_from_args(args) -> list[Stage]:
    if args.stages:
        return load_stages(args.stages)
    return [Stage("single", args.resolution, args.num_frames, args.max_train_steps, args.train_batch_size,
                  args.learning_rate, warmup_steps=args.lr_warmup_steps)]  # fmt: skip


def training_config_from_args(args, project: str = "videoar") -> TrainingConfig:
    data = DataOptions(
        dataset=args.dataset, image_dataset=args.image_dataset, dataset_config_name=args.dataset_config_name,
        split=args.split, streaming=args.streaming, fps=args.fps, clips_per_video=args.clips_per_video,
        short_video=args.short_videos, num_workers=args.dataloader_num_workers, label_column=args.label_column,
        shapes=shapes_options_from_args(args),
    )  # fmt: skip
    return TrainingConfig(
        output_dir=Path(args.output_dir), stages=stages_from_args(args), data=data, seed=args.seed,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=args.max_grad_norm,
        adam_betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay, use_ema=args.use_ema,
        ema_decay=args.ema_decay, checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit, resume_from_checkpoint=args.resume_from_checkpoint,
        allow_inexact_resume=args.allow_inexact_resume, logging_steps=args.logging_steps, project=project,
        tracker_config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
    )  # fmt: skip


def make_accelerator(config: TrainingConfig, mixed_precision: str = "no", report_to: str = "none") -> Accelerator:
    """The scripts' `Accelerator`: a global batch split across processes, so N processes train like one with the
    same batch; logging on the main process; the same seed everywhere, so every process builds the same model.

    A launch that would silently train something else than asked stops here: several launched processes that
    accelerate did not join into one group, or an FSDP config that accelerate turned into another mode.
    """
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=str(config.output_dir), logging_dir=str(config.output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched but accelerate joined {accelerator.num_processes} into a group "
            f"({accelerator.distributed_type.value}): each would train alone into the same output folder. On CPU, "
            "launch with --multi_gpu and ACCELERATE_USE_CPU=1 (or a multi-CPU config), not `use_cpu` alone."
        )
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"The accelerate config asks for FSDP, but accelerate set up {accelerator.distributed_type.value}: it "
            "enables FSDP on GPUs only. Use a DDP config on CPU."
        )
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    logger.info(f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, device {accelerator.device}")
    set_seed(config.seed)
    return accelerator
