"""What the training scripts in `examples/` share: the curriculum, checkpoints, the loss history and guards.

Checkpoints are accelerate's `save_state` folders, written under a temporary name and renamed into place, so a kill
at any moment leaves the previous checkpoint usable. Everything we add to them (EMA weights, the loss history, the
position in the curriculum) is safetensors or JSON: nothing of ours is read back with pickle.
"""

import json
import logging
import math
import random
import re
import shutil
import sys
import zipfile
from dataclasses import MISSING, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import ConcatDataset

from .atomic_directory import replace_directory

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def run_script(prog: str, main, parse_args) -> None:
    """Run a training script as the `videoar` command runs: bad input (a missing dataset, a wrong option) is one line
    on stderr and exit status 2, a non-finite loss exit 1, Ctrl-C one line and 130; never a traceback for these."""
    from .cli import one_line

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


# ---------------------------------------------------------------- curriculum (docs/method.md §7)


@dataclass
class Stage:
    """One stage of the curriculum. `image_ratio` is the share of steps that train on images (1-frame videos)."""

    name: str
    resolution: int
    num_frames: int
    steps: int
    batch_size: int
    learning_rate: float
    image_ratio: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self):
        checks = {
            "resolution": self.resolution >= 1,
            "num_frames": self.num_frames >= 1,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "image_ratio": 0 <= self.image_ratio <= 1,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"Stage {self.name!r}: `{field}` = {getattr(self, field)!r} is out of range.")


def load_stages(path: str | Path) -> list[Stage]:
    """Read a stage file (YAML or JSON): `{"stages": [{"name", "resolution", "num_frames", "steps", "batch_size",
    "learning_rate", "image_ratio"?, "warmup_steps"?}, ...]}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Stage file {str(path)!r} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    entries = data.get("stages") if isinstance(data, dict) else None
    if not entries:
        raise ValueError(f"Stage file {str(path)!r} must hold a non-empty list under `stages`.")
    known = {f.name for f in fields(Stage)}
    stages = []
    for i, entry in enumerate(entries):
        entry = {"name": str(i), **entry}
        unknown = set(entry) - known
        missing = {f.name for f in fields(Stage) if f.default is MISSING} - set(entry)
        if unknown or missing:
            raise ValueError(
                f"Stage {i} of {str(path)!r}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}; "
                f"allowed: {sorted(known)}."
            )
        stages.append(Stage(**entry))
    return stages


class StageSchedule:
    """Maps the global step to its stage, and gives each stage its own warm-up + cosine learning-rate curve
    (docs/method.md §7: lr cosine). Use `lr_at` as a `LambdaLR` factor on an optimizer whose base lr is 1."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        self.starts = [sum(s.steps for s in stages[:i]) for i in range(len(stages))]
        self.total_steps = sum(s.steps for s in stages)

    def locate(self, step: int) -> tuple[int, int]:
        """(stage index, step inside that stage) of a global step."""
        for index in reversed(range(len(self.stages))):
            if step >= self.starts[index]:
                return index, step - self.starts[index]
        raise ValueError(f"step {step} is negative")

    def lr_at(self, step: int) -> float:
        index, local = self.locate(min(step, self.total_steps - 1))
        stage = self.stages[index]
        if local < stage.warmup_steps:
            return stage.learning_rate * (local + 1) / stage.warmup_steps
        progress = (local - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
        return stage.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- loss history


class LossHistory:
    """Logged values per optimizer step; saved as JSON in every checkpoint, plotted at the end."""

    def __init__(self, records: list[dict] | None = None):
        self.records = records or []

    def append(self, step: int, **values: float) -> None:
        self.records.append({"step": step, **{k: float(v) for k, v in values.items()}})

    def save(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.records))

    @classmethod
    def load(cls, path: Path) -> "LossHistory":
        return cls(json.loads(Path(path).read_text()))

    def plot(self, path: Path, title: str = "training loss") -> None:
        """Write a PNG of every logged loss against the step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = sorted({k for r in self.records for k in r if "loss" in k})
        figure, axis = plt.subplots(figsize=(7, 4))
        for key in keys:
            points = [(r["step"], r[key]) for r in self.records if key in r]
            axis.plot(*zip(*points), label=key, linewidth=1)
        axis.set(xlabel="step", ylabel="loss", title=title)
        if keys:
            axis.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


# ---------------------------------------------------------------- checkpoints


class CheckpointManager:
    """`output_dir/checkpoint-{step}` folders, written atomically, at most `total_limit` kept.

    Besides accelerate's state, a checkpoint holds `training_state.json` (the global step and the loss history) and
    `extra.safetensors`: state outside the prepared objects (EMA weights, LeCAM averages), restored in place.
    """

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, total_limit: int | None = None):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first; interrupted saves (hidden temporary folders) are not listed."""
        if not self.output_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def resolve(self, resume_from_checkpoint: str | None) -> Path | None:
        """`"latest"` (or None when there is none yet) or a path; a missing path is an error."""
        if resume_from_checkpoint is None:
            return None
        if resume_from_checkpoint == "latest":
            existing = self.checkpoints()
            return existing[-1] if existing else None
        path = Path(resume_from_checkpoint)
        if not (path / "training_state.json").is_file():
            raise FileNotFoundError(f"--resume_from_checkpoint {str(path)!r} is not a checkpoint folder of this script.")
        return path

    def save(self, step: int, history: LossHistory, extra: dict[str, torch.Tensor] | None = None) -> Path:
        target = self.output_dir / f"checkpoint-{step}"
        tmp = self.output_dir / f".checkpoint-{step}.partial"
        if self.accelerator.is_main_process:  # left by runs killed while saving: one run writes this folder
            for stale in self.output_dir.glob(".checkpoint-*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(tmp, safe_serialization=True)
        if self.accelerator.is_main_process:
            (tmp / "training_state.json").write_text(json.dumps({"step": step, "history": history.records}))
            tensors = {name: t.detach().cpu().contiguous() for name, t in (extra or {}).items()}
            save_file(tensors, tmp / "extra.safetensors")
            replace_directory(tmp, target)
            self._prune()
        self.accelerator.wait_for_everyone()
        return target

    def load(self, path: Path, extra: dict[str, torch.Tensor] | None = None, allow_inexact: bool = False) -> tuple[int, LossHistory]:
        """Restore accelerate's state (models, optimizers, schedulers, RNGs) and copy the saved `extra` tensors into
        the given ones; return the step and the loss history.

        Every part is checked first: an unreadable one stops the resume with an error naming the file, since accelerate
        would skip a bad RNG state with an INFO line and the run would silently stop being exact. With
        `allow_inexact`, a bad RNG state is a warning and the run continues with fresh random numbers.
        """
        self._check_readable(path, allow_inexact)
        self.accelerator.load_state(path)
        state = json.loads((path / "training_state.json").read_text())
        saved = load_file(path / "extra.safetensors")
        for name, tensor in (extra or {}).items():
            if name not in saved:
                raise ValueError(f"Checkpoint {str(path)!r} has no `{name}`: was it saved with the same options?")
            tensor.data.copy_(saved[name])
        return state["step"], LossHistory(state["history"])

    def _check_readable(self, path: Path, allow_inexact: bool) -> None:
        def bad(file: Path, why) -> ValueError:
            return ValueError(f"--resume_from_checkpoint {str(path)!r}: {file.name} is unreadable ({why}); the "
                              "checkpoint is damaged. Resume from an earlier one.")  # fmt: skip

        state_file = path / "training_state.json"
        try:
            state = json.loads(state_file.read_text())
            if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("history"), list)):
                raise ValueError("no step and history")
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise bad(state_file, error) from error
        for weights in sorted(path.glob("*.safetensors")):
            try:
                with safe_open(weights, framework="pt") as f:
                    f.keys()
            except Exception as error:  # safetensors raises its own types for a truncated header
                raise bad(weights, error) from error
        # accelerate reads this with its own unpickler; here only its container (torch's zip format) is checked,
        # which finds a missing or truncated file without unpickling anything
        rng_file = path / f"random_states_{self.accelerator.process_index}.pkl"
        try:
            with zipfile.ZipFile(rng_file) as archive:
                if archive.testzip() is not None:
                    raise ValueError("a damaged member")
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            if not allow_inexact:
                raise bad(rng_file, error) from error
            logger.warning(f"{rng_file} is unreadable ({error}); --allow_inexact_resume: continuing with fresh random "
                           "numbers, so this run will not repeat an uninterrupted one.")  # fmt: skip

    def _prune(self) -> None:
        if self.total_limit is None:
            return
        for old in self.checkpoints()[: -self.total_limit]:
            shutil.rmtree(old, ignore_errors=True)


def all_finite(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (so all processes stop together)."""
    return bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())


def parameters_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Index batches over a map-style dataset: a seeded permutation per epoch, last partial batch dropped.

    Batch `b` depends only on `(seed, b)`, so a run resumed at batch `start_batch` sees exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, num_batches: int, seed: int, start_batch: int = 0):
        if num_items < batch_size:
            raise ValueError(f"The dataset has {num_items} items, fewer than one batch of {batch_size}.")
        self.num_items, self.batch_size, self.num_batches = num_items, batch_size, num_batches
        self.seed, self.start_batch = seed, start_batch
        self.batches_per_epoch = num_items // batch_size

    def _permutation(self, epoch: int) -> list[int]:
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self):
        epoch, permutation = None, None
        for b in range(self.start_batch, self.num_batches):
            if b // self.batches_per_epoch != epoch:
                epoch = b // self.batches_per_epoch
                permutation = self._permutation(epoch)
            position = (b % self.batches_per_epoch) * self.batch_size
            yield permutation[position : position + self.batch_size]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


# ---------------------------------------------------------------- data and command line shared by the scripts


def collate(items: list[dict]) -> dict:
    """Stack tensor fields, list the rest (captions, metadata)."""
    return {k: torch.stack([i[k] for i in items]) if torch.is_tensor(items[0][k]) else [i[k] for i in items] for k in items[0]}


def build_dataset(args, source: str, resolution: int, num_frames: int, seed: int):
    """`"shapes"` (the synthetic dataset, held-out triples excluded unless `--include_held_out`) or any source
    `load_video_dataset` reads: a videofolder, a saved `datasets` folder, a Hub dataset."""
    if source == "shapes":
        from .shapes import COLOURS, HELD_OUT_TRIPLES, ShapesDataset, training_triples

        palette = shapes_palette(args)
        held_out = () if args.include_held_out else HELD_OUT_TRIPLES
        triples = [t for t in training_triples(held_out, palette) if t.colour in (args.shapes_colours or palette)]
        part = partial(ShapesDataset, num_frames=num_frames, resolution=resolution, colours=palette, held_out=held_out)
        if args.shapes_new_colour_share is None:
            return part(args.num_clips, seed=seed, triples=triples)
        # a fixed share of new-colour clips, so a LoRA learns them without forgetting the rest; each part its own seed
        new_colours = palette.keys() - COLOURS.keys()
        num_new = round(args.shapes_new_colour_share * args.num_clips)
        parts = [
            part(count, seed=part_seed, triples=[t for t in triples if (t.colour in new_colours) == is_new])
            for count, part_seed, is_new in ((num_new, seed, True), (args.num_clips - num_new, seed + 2**31, False))
            if count
        ]
        return ConcatDataset(parts)
    from .video_data import load_video_dataset

    extra = {"name": args.dataset_config_name} if args.dataset_config_name else {}
    return load_video_dataset(
        source, num_frames=num_frames, resolution=resolution, fps=args.fps, split=args.split,
        streaming=args.streaming, seed=seed, **extra,
    )  # fmt: skip


def shapes_palette(args) -> dict[str, tuple[int, int, int]]:
    """The Shapes palette with `--shapes_new_colours` added."""
    from .shapes import COLOURS, parse_colour

    try:
        return {**COLOURS, **dict(parse_colour(spec) for spec in args.shapes_new_colours)}
    except ValueError as error:
        raise ValueError(f"--shapes_new_colours: {error}") from error


class StageBatches:
    """The micro-batches of one curriculum stage, in an order a resumed run reproduces.

    Each optimizer step trains on videos or, with probability `stage.image_ratio` (a fixed seeded draw per step), on
    images: the image source at one frame (docs/method.md §7, stage I). `make_dataset(source, num_frames)` builds a
    dataset; `prepare` may turn a finite dataset into another (e.g. cached latents).
    """

    def __init__(self, accelerator, stage: Stage, sources: dict[bool, str], make_dataset, accumulation: int,
                 start_step: int, seed: int, num_workers: int = 0, prepare=None):  # fmt: skip
        rng = random.Random(seed)
        self.is_image_step = [rng.random() < stage.image_ratio for _ in range(stage.steps)]
        self.accumulation = accumulation
        self.loaders, self.datasets = {}, []
        for is_image in (False, True):
            num_steps = self.is_image_step.count(is_image)
            if num_steps == 0:
                continue
            dataset = make_dataset(sources[is_image], 1 if is_image else stage.num_frames)
            self.datasets.append(dataset)
            if prepare is not None:
                dataset = prepare(dataset)
            done = self.is_image_step[:start_step].count(is_image) * accumulation
            self.loaders[is_image] = self._loader(
                accelerator, dataset, stage.batch_size, num_steps * accumulation, done, seed + is_image, num_workers
            )

    @staticmethod
    def _loader(accelerator, dataset, batch_size, num_batches, done, seed, num_workers):
        # a generator of its own: creating an iterator must not draw from the global RNG that checkpoints restore
        options = dict(collate_fn=collate, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        if isinstance(dataset, torch.utils.data.IterableDataset):
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, **options)
            return iter(accelerator.skip_first_batches(accelerator.prepare_data_loader(loader), done))
        sampler = ResumableBatchSampler(len(dataset), batch_size, num_batches, seed, done)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **options)
        return iter(accelerator.prepare_data_loader(loader))

    def data_stats(self) -> dict[str, int]:
        """Bad items met so far (corrupt, too short, padded, missing caption), summed over this stage's datasets."""
        totals: dict[str, int] = {}
        for dataset in self.datasets:
            for kind, count in (dataset.stats.as_dict() if hasattr(dataset, "stats") else {}).items():
                totals[kind] = totals.get(kind, 0) + count
        return totals

    def micro_batches(self, local_step: int):
        """The `accumulation` micro-batches of one optimizer step."""
        loader = self.loaders[self.is_image_step[local_step]]
        return [next(loader) for _ in range(self.accumulation)]


def add_training_args(parser, learning_rate: float, resolution: int = 64, num_frames: int = 17):
    """The data, curriculum, optimization and output flags both training scripts take."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="shapes", help="'shapes' (synthetic), a local videofolder (metadata.csv/jsonl with file_name and text), a saved `datasets` folder, or a Hub dataset id.")
    data.add_argument("--dataset_config_name", default=None, help="Config name of a Hub dataset.")
    data.add_argument("--split", default="train", help="Dataset split.")
    data.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it whole.")
    data.add_argument("--image_dataset", default=None, help="Images for stages with image_ratio > 0, as 1-frame videos (default: --dataset at 1 frame).")
    data.add_argument("--num_clips", type=int, default=2048, help="Shapes only: clips per epoch.")
    data.add_argument("--include_held_out", action="store_true", help="Shapes only: also train on the held-out (colour, shape, motion) triples.")
    data.add_argument("--shapes_new_colours", nargs="+", default=[], metavar="NAME=R,G,B", help="Shapes only: colours added to the palette, e.g. orange=255,128,0.")
    data.add_argument("--shapes_new_colour_share", type=float, default=None, metavar="P", help="Shapes only: the share of clips in the new colours, the rest in the original ones (default: every triple equally likely).")
    data.add_argument("--shapes_colours", nargs="+", default=None, metavar="NAME", help="Shapes only: train on these colours of the palette alone (default: all).")
    data.add_argument("--fps", type=float, default=8.0, help="Frame rate clips are sampled at from real videos.")
    data.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")

    stages = parser.add_argument_group("curriculum: a --stages file, or one stage from the flags below (docs/method.md §7)")
    stages.add_argument("--stages", default=None, help="YAML or JSON stage file; each stage: name, resolution, num_frames, steps, batch_size, learning_rate, image_ratio, warmup_steps.")
    stages.add_argument("--resolution", type=int, default=resolution, help="Pixel side of the single stage.")
    stages.add_argument("--num_frames", type=int, default=num_frames, help="Frames per clip of the single stage (1 + 4k).")
    stages.add_argument("--max_train_steps", type=int, default=1000, help="Optimizer steps of the single stage.")
    stages.add_argument("--train_batch_size", type=int, default=8, help="Global batch of the single stage, split across processes.")
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


def check_training_args(parser, args) -> None:
    """Reject bad flags before anything is loaded; `parser.error` prints one line and exits with status 2."""
    for name in ("checkpointing_steps", "gradient_accumulation_steps", "logging_steps", "num_clips", "checkpoints_total_limit"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        parser.error("--mixed_precision fp16 needs a GPU (fp16 matmuls are ~100x slower on CPU); use bf16 or no.")
    if not 0 < args.ema_decay < 1:
        parser.error(f"--ema_decay must be in (0, 1), got {args.ema_decay}.")
    try:
        build_stages(args)
        palette = shapes_palette(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    unknown = sorted(set(args.shapes_colours or ()) - set(palette))
    if unknown:
        parser.error(f"--shapes_colours {unknown} are not in the palette {list(palette)}; add them with --shapes_new_colours.")
    if (share := args.shapes_new_colour_share) is not None:
        from .shapes import COLOURS

        if not args.shapes_new_colours:
            parser.error("--shapes_new_colour_share needs --shapes_new_colours.")
        if not 0 < share < 1:
            parser.error(f"--shapes_new_colour_share must be in (0, 1), got {share}; leave it out to draw colours evenly.")
        colours, new_colours = set(args.shapes_colours or palette), palette.keys() - COLOURS.keys()
        if not colours & new_colours or not colours - new_colours:
            parser.error("--shapes_new_colour_share needs both new and original colours in --shapes_colours.")


def build_stages(args) -> list[Stage]:
    if args.stages:
        return load_stages(args.stages)
    return [Stage("single", args.resolution, args.num_frames, args.max_train_steps, args.train_batch_size,
                  args.learning_rate, warmup_steps=args.lr_warmup_steps)]  # fmt: skip



def ema_tensors(ema) -> dict[str, torch.Tensor]:
    """A diffusers `EMAModel`'s weights for `CheckpointManager`. Its step counter is the training step (it steps
    once per optimizer step), so a resumed run sets `ema.optimization_step = step`."""
    return {} if ema is None else {f"ema.{i}": p for i, p in enumerate(ema.shadow_params)}


def make_accelerator(args) -> Accelerator:
    """The scripts' `Accelerator`: a global batch split across processes, so N processes train like one with the
    same batch; logging set up and every RNG seeded."""
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.info(f"{accelerator.num_processes} process(es), device {accelerator.device}")
    set_seed(args.seed)
    return accelerator


def start_or_resume(args, accelerator, extra: dict[str, torch.Tensor], ema=None) -> tuple[CheckpointManager, int, LossHistory]:
    """The checkpoint manager, and the step and loss history to start from (`--resume_from_checkpoint`)."""
    checkpoints = CheckpointManager(accelerator, args.output_dir, args.checkpoints_total_limit)
    step, history = 0, LossHistory()
    if (path := checkpoints.resolve(args.resume_from_checkpoint)) is not None:
        step, history = checkpoints.load(path, extra, allow_inexact=args.allow_inexact_resume)
        if ema is not None:
            ema.optimization_step = step
        logger.info(f"Resumed from {path} at step {step}.")
    return checkpoints, step, history


def stage_batches_for(args, accelerator, stages: list[Stage], index: int, start: int, prepare=None) -> StageBatches:
    """The batches of stage `index` from its step `start`, from `--dataset` (and `--image_dataset` for stills)."""
    stage = stages[index]
    logger.info(f"Stage {stage.name}: steps {start}..{stage.steps}, {stage.resolution}px x {stage.num_frames} frames")
    return StageBatches(
        accelerator, stage, {False: args.dataset, True: args.image_dataset or args.dataset},
        lambda source, frames: build_dataset(args, source, stage.resolution, frames, seed=args.seed + index),
        args.gradient_accumulation_steps, start, seed=args.seed + 1000 * index,
        num_workers=args.dataloader_num_workers, prepare=prepare,
    )  # fmt: skip


def stop_on_non_finite_loss(loss, step: int, checkpoints: CheckpointManager, model, history, extra) -> None:
    """Save the state if the weights are still finite, then stop with the step named."""
    saved = checkpoints.save(step, history, extra) if parameters_finite(model) else None
    raise NonFiniteLossError(
        f"The loss became {loss.item()} at step {step + 1}; "
        + (f"the last finite state is saved in {saved}." if saved else "the weights are not finite either.")
    )


def trackable(args) -> dict:
    """The flags a tracker can record."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
