"""Training: one loop for every script (`Trainer`), the curriculum, resumable checkpoints and data, and the
text-to-video loss step. Needs the `train` extras."""

from .arguments import add_training_args, check_training_args, make_accelerator, run_script, training_config_from_args
from .checkpoints import CheckpointManager, LossHistory
from .curriculum import Stage, StageSchedule, load_stages
from .data import DataOptions, ResumableBatchSampler, StageBatches, collate, sample_generators
from .shapes_options import ShapesOptions
from .trainer import NonFiniteLossError, Trainer, TrainingConfig

__all__ = [
    "CheckpointManager",
    "DataOptions",
    "LossHistory",
    "NonFiniteLossError",
    "ResumableBatchSampler",
    "ShapesOptions",
    "Stage",
    "StageBatches",
    "StageSchedule",
    "Trainer",
    "TrainingConfig",
    "add_training_args",
    "check_training_args",
    "collate",
    "load_stages",
    "make_accelerator",
    "run_script",
    "sample_generators",
    "training_config_from_args",
]
