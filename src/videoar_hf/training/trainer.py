"""The one training loop: the curriculum, gradient accumulation, checkpoint/resume, the non-finite-loss guard,
logging, samples at checkpoints and the EMA, on one process or many (DDP or FSDP2).

A script subclasses `Trainer` and supplies only what differs: `training_step` (the loss of one micro-batch), and
optionally `auxiliary_step` (e.g. a GAN discriminator), `write_samples`, `extra_state` and `save_model`.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from .checkpoints import CheckpointManager, LossHistory, local_shard
from .curriculum import Stage, StageSchedule
from .data import DataOptions, StageBatches, sample_generators

logger = get_logger(__name__)  # logs on the main process only, unless a call asks otherwise


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class TrainingConfig:
    """Everything the loop needs, as plain values (a script fills it from its flags)."""

    output_dir: Path
    stages: list[Stage]
    data: DataOptions = field(default_factory=DataOptions)
    seed: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.95)  # docs/method.md §7
    weight_decay: float = 0.05  # docs/method.md §7
    use_ema: bool = False
    ema_decay: float = 0.999
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None
    allow_inexact_resume: bool = False
    logging_steps: int = 10
    project: str = "videoar"
    tracker_config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)


class Trainer(ABC):
    """Trains `model` (its parameters that require grad) over `config.stages`; see the module docstring.

    `accelerator` comes from `make_accelerator`. Call `setup()` (with any other model and optimizer of the step),
    then `train()`.
    """

    def __init__(self, accelerator: Accelerator, config: TrainingConfig, model: torch.nn.Module):
        self.accelerator = accelerator
        self.config = config
        self.schedule = StageSchedule(config.stages)
        self.model = model
        for stage in config.stages:  # before anything heavy: a batch that does not split is a setup error
            for name, size in (("batch_size", stage.batch_size), ("image_batch_size", stage.image_batch_size)):
                if size is not None and size % accelerator.num_processes:
                    raise ValueError(
                        f"Stage {stage.name!r}: the global `{name}` of {size} does not split across "
                        f"{accelerator.num_processes} processes; use a multiple of {accelerator.num_processes}."
                    )
        self.optimizer = None
        self.ema = None

    # ------------------------------------------------------------------ what a script supplies

    @abstractmethod
    def training_step(self, batch: dict, generators: list[torch.Generator], step: int) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch, and detached scalars to log. `generators`: one per sample, for every random
        draw (see `data.sample_generators`)."""

    def auxiliary_step(self, step: int) -> dict:
        """Runs after the model's optimizer step of every micro-batch (e.g. a discriminator); returns scalars to log."""
        return {}

    def dataset(self, source: str, stage: Stage, num_frames: int, seed: int):
        """The dataset of one stage; `prepare_dataset` may replace it (e.g. by cached latents)."""
        return self.config.data.build(source, num_frames, stage.resolution, seed, self.accelerator.process_index,
                                      self.accelerator.num_processes)  # fmt: skip

    def prepare_dataset(self, dataset, source: str, stage: Stage, num_frames: int, seed: int):
        """`dataset` as built by `dataset(source, stage, num_frames, seed)`, which is everything it depends on."""
        return dataset

    def frame_cost(self, num_frames: int) -> int:
        """What a clip of `num_frames` costs relative to others (frames for a pixel-space model); sizes image
        batches (`Stage.image_batch_size`)."""
        return num_frames

    def batch_sizes(self, stage: Stage) -> dict[bool, int]:
        """Global batch of video steps (False) and image steps (True): by default an image batch costs what a video
        batch costs, rounded down to a multiple of the process count."""
        images = stage.image_batch_size
        if images is None:
            processes = self.accelerator.num_processes
            images = stage.batch_size * self.frame_cost(stage.num_frames) // self.frame_cost(1) // processes * processes
        return {False: stage.batch_size, True: max(images, self.accelerator.num_processes)}

    def write_samples(self, folder: Path, stage: Stage, batch: dict) -> None:
        """Samples at a checkpoint. Runs on every process (sharded models need them all for a forward pass); write
        files on the main process only."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors outside the prepared objects that a checkpoint must hold (the EMA's are added by the loop)."""
        return {}

    @abstractmethod
    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Save the final model from its full state dict (main process only)."""

    # ------------------------------------------------------------------ the loop

    def setup(self, extra_models: tuple = (), extra_optimizers: tuple = ()) -> None:
        """Prepare the model, its AdamW and the learning-rate schedule (and any other model and optimizer of the
        step) with accelerate, and the EMA over the prepared parameters."""
        from diffusers.training_utils import EMAModel

        config = self.config
        # built before prepare so accelerate sees them; the trainable list is taken again after, since FSDP2
        # replaces parameters by sharded ones
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=1.0, betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )  # fmt: skip  # lr 1: the schedule gives the absolute learning rate
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lr_at)
        prepared = self.accelerator.prepare(self.model, optimizer, lr_scheduler, *extra_models, *extra_optimizers)
        self.model, self.optimizer, self.lr_scheduler = prepared[:3]
        self.extra_models = prepared[3 : 3 + len(extra_models)]
        self.extra_optimizers = prepared[3 + len(extra_models) :]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMAModel(self.trainable, decay=config.ema_decay) if config.use_ema else None
        self.checkpoints = CheckpointManager(self.accelerator, config.output_dir, config.checkpoints_total_limit)
        # every process built the same model from one seed; from here on, draws outside `sample_generators` (e.g. a
        # LoRA's dropout) differ per process, and checkpoints keep each process's state
        set_seed(config.seed, device_specific=True)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def train(self) -> None:
        if self.optimizer is None:
            self.setup()
        config, accelerator = self.config, self.accelerator
        step, history = self._resume()
        accelerator.init_trackers(config.project, config=config.tracker_config)
        first_stage, first_local = self.schedule.locate(step) if step < self.schedule.total_steps else (len(config.stages), 0)
        for index in range(first_stage, len(config.stages)):
            stage = config.stages[index]
            start = first_local if index == first_stage else 0
            batches = self._stage_batches(index, start, self.checkpoints.data_state if index == first_stage else None)
            for local in range(start, stage.steps):
                lr = self.lr_scheduler.get_last_lr()[0]
                micro_batches = batches.micro_batches(local)
                logs = [self._micro_step(batch, step, m) for m, batch in enumerate(micro_batches)]
                step += 1
                if self.ema:
                    self.ema.step(self.trainable)
                self._pending.append((step, lr, {k: torch.stack([log[k] for log in logs]).mean() for k in logs[0]}))
                if step % config.logging_steps == 0 or step % config.checkpointing_steps == 0 or step == self.schedule.total_steps:
                    self._log(batches)
                if step % config.checkpointing_steps == 0:
                    path = self.checkpoints.save(step, history, self._extra_state(), batches.data_state())
                    self._samples(config.output_dir / "samples" / path.name, stage, micro_batches[-1])
        self._finish(history)

    def _stage_batches(self, index: int, start: int, data_state: dict | None) -> StageBatches:
        stage, data = self.config.stages[index], self.config.data
        logger.info(f"Stage {stage.name}: steps {start}..{stage.steps}, {stage.resolution}px x {stage.num_frames} frames")
        seed = self.config.seed + index
        sources = {False: (data.dataset, stage.num_frames), True: (data.image_dataset or data.dataset, 1)}
        datasets = {}
        for is_image, (source, num_frames) in sources.items():
            if (is_image and stage.image_ratio > 0) or (not is_image and stage.image_ratio < 1):
                dataset = self.dataset(source, stage, num_frames, seed)
                datasets[is_image] = self.prepare_dataset(dataset, source, stage, num_frames, seed)
        workers = 0 if data.streaming and data.num_workers is None else data.workers(self.accelerator.num_processes)
        return StageBatches(self.accelerator, stage, datasets, self.batch_sizes(stage), self.config.gradient_accumulation_steps,
                            start, seed=self.config.seed + 1000 * index, num_workers=workers, data_state=data_state)  # fmt: skip

    def _micro_step(self, batch: dict, step: int, micro: int) -> dict[str, torch.Tensor]:
        accelerator = self.accelerator
        local_size = len(next(iter(batch.values())))
        generators = sample_generators(self.config.seed, step, micro, accelerator.process_index * local_size, local_size)
        with accelerator.accumulate(self.model, *self.extra_models):
            loss, logs = self.training_step(batch, generators, step)
            self._finite = (self._finite if micro else torch.ones((), device=accelerator.device)) * torch.isfinite(loss.detach())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                self._stop_unless_finite(loss, step)
                accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
            logs = {"loss": loss.detach(), **logs, **self.auxiliary_step(step)}
        return logs

    def _stop_unless_finite(self, loss: torch.Tensor, step: int) -> None:
        """Before the optimizer step, once per step and on every process together (one tiny all-reduce): a NaN or
        infinite loss stops the run with the last finite state saved."""
        if bool(self.accelerator.reduce(self._finite, "min")):
            return
        self._flush()
        saved = self.checkpoints.save(step, self._history, self._extra_state()) if step else None
        raise NonFiniteLossError(
            f"The loss became {loss.item()} at step {step + 1}; "
            + (f"the last finite state is saved in {saved}." if saved else "no step had finished yet.")
        )

    def _flush(self) -> None:
        """Move the pending per-step values into the history: one all-reduce for all of them, not a sync per step
        (a value a step did not log is NaN in the table and left out)."""
        if not self._pending:
            return
        keys = list(dict.fromkeys(k for *_, logs in self._pending for k in logs))
        nan = torch.tensor(float("nan"), device=self.accelerator.device)
        table = torch.stack([torch.stack([logs.get(k, nan).float() for k in keys]) for *_, logs in self._pending])
        for (step, lr, _), row in zip(self._pending, self.accelerator.reduce(table, "mean").tolist()):
            self._history.append(step, lr=lr, **{k: v for k, v in zip(keys, row) if v == v})
        self._pending.clear()

    def _log(self, batches: StageBatches) -> None:
        self._flush()
        latest = self._history.records[-1]
        bad_data = {f"data/{k}": v for k, v in batches.data_stats().items() if v}
        self.accelerator.log({**latest, **bad_data}, step=latest["step"])
        shown = " ".join(f"{k} {v:.4f}" for k, v in latest.items() if k not in ("step", "lr"))
        logger.info(f"step {latest['step']}/{self.schedule.total_steps} {shown} lr {latest['lr']:.2e} {bad_data or ''}")

    def _extra_state(self) -> dict[str, torch.Tensor]:
        ema = {f"ema.{i}": p for i, p in enumerate(self.ema.shadow_params)} if self.ema else {}
        return {**ema, **self.extra_state()}

    def _resume(self) -> tuple[int, LossHistory]:
        step, history = 0, LossHistory()
        path = self.checkpoints.resolve(self.config.resume_from_checkpoint)
        if path is not None:
            step, history = self.checkpoints.load(path, self._extra_state(), allow_inexact=self.config.allow_inexact_resume)
            if self.ema:
                self.ema.optimization_step = step  # the EMA steps once per optimizer step
            logger.info(f"Resumed from {path} at step {step}.")
        self._history, self._pending = history, []
        return step, history

    def _samples(self, folder: Path, stage: Stage, batch: dict) -> None:
        """Samples with the EMA weights when there is an EMA; every process takes part."""
        self.unwrapped.eval()
        if self.ema:
            trained = [local_shard(p).clone() for p in self.trainable]
            copy_into(self.trainable, self.ema.shadow_params)
        self.write_samples(folder, stage, batch)
        reshard(self.model)
        if self.ema:
            copy_into(self.trainable, trained)
        self.unwrapped.train()
        self.accelerator.wait_for_everyone()

    def _finish(self, history: LossHistory) -> None:
        """The final weights (the EMA's when there is one), gathered whole on the main process and saved there."""
        accelerator, output_dir = self.accelerator, self.config.output_dir
        accelerator.wait_for_everyone()
        if self.ema:
            copy_into(self.trainable, self.ema.shadow_params)
        state_dict = accelerator.get_state_dict(self.model)  # a collective under FSDP: every process calls it
        # a model compiled by accelerate (its config, or ACCELERATE_DYNAMO_BACKEND) names its weights "_orig_mod.*"
        state_dict = state_dict and {name.removeprefix("_orig_mod."): value for name, value in state_dict.items()}
        if accelerator.is_main_process:
            history.save(output_dir / "history.json")
            history.plot(output_dir / "loss_curve.png", title=self.config.project)
            self.save_model(state_dict)
        accelerator.wait_for_everyone()
        accelerator.end_training()


@torch.no_grad()
def copy_into(parameters: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Copy values into parameters in place, each process its own shard (no full copy on the CPU, as diffusers'
    `EMAModel.store` would make)."""
    for parameter, value in zip(parameters, values):
        local_shard(parameter).copy_(local_shard(value))


def reshard(model: torch.nn.Module) -> None:
    """Free FSDP2's gathered weights after a forward outside training (the root module keeps them gathered, and the
    next step would read them instead of the shards)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
