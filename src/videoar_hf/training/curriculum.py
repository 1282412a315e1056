"""The curriculum (docs/method.md §7): stages of growing resolution and length, each with its own warm-up and cosine
learning-rate curve."""

import json
import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path


@dataclass
class Stage:
    """One stage of the curriculum. `image_ratio` is the share of steps that train on images (1-frame videos);
    `image_batch_size` is their global batch, by default as many images as cost what one batch of videos costs
    (`Trainer.frame_cost`), so image steps are not a fraction of a video step's work (the paper gives no size)."""

    name: str
    resolution: int
    num_frames: int
    steps: int
    batch_size: int
    learning_rate: float
    image_ratio: float = 0.0
    warmup_steps: int = 0
    image_batch_size: int | None = None

    def __post_init__(self):
        checks = {
            "resolution": self.resolution >= 1,
            "num_frames": self.num_frames >= 1,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "image_ratio": 0 <= self.image_ratio <= 1,
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "image_batch_size": self.image_batch_size is None or self.image_batch_size >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"Stage {self.name!r}: `{field}` = {getattr(self, field)!r} is out of range.")


def load_stages(path: str | Path) -> list[Stage]:
    """Read a stage file (YAML or JSON): `{"stages": [{"name", "resolution", "num_frames", "steps", "batch_size",
    "learning_rate", "image_ratio"?, "warmup_steps"?, "image_batch_size"?}, ...]}`."""
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


