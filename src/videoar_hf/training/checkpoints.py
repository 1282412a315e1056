"""Checkpoints and the loss history.

Checkpoints are accelerate's `save_state` folders, written under a temporary name and renamed into place, so a kill
at any moment leaves the previous checkpoint usable. Everything we add to them (EMA weights, the loss history, the
position in the curriculum and in a streamed dataset) is safetensors or JSON: nothing of ours is read back with
pickle.
"""

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..atomic_directory import replace_directory

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
logger = logging.getLogger(__name__)


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


class CheckpointManager:
    """`output_dir/checkpoint-{step}` folders, written atomically, at most `total_limit` kept.

    Besides accelerate's state, a checkpoint holds `training_state.json` (the global step and the loss history) and,
    per process, `extra_{rank}.safetensors` (state outside the prepared objects: EMA weights, LeCAM averages, restored
    in place; each process keeps its own shard under FSDP) and `data_state_{rank}.json` (where a streamed dataset
    stands, so a resume does not replay it).
    """

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, total_limit: int | None = None):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit
        self.data_state: dict = {}

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

    def save(self, step: int, history: LossHistory, extra: dict[str, torch.Tensor] | None = None,
             data_state: dict | None = None) -> Path:  # fmt: skip
        target = self.output_dir / f"checkpoint-{step}"
        tmp = self.output_dir / f".checkpoint-{step}.partial"
        rank = self.accelerator.process_index
        if self.accelerator.is_main_process:  # left by runs killed while saving: one run writes this folder
            for stale in self.output_dir.glob(".checkpoint-*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(tmp, safe_serialization=True)
        save_file({name: local_shard(t).cpu().contiguous() for name, t in (extra or {}).items()}, tmp / f"extra_{rank}.safetensors")
        (tmp / f"data_state_{rank}.json").write_text(json.dumps(data_state or {}))
        self.accelerator.wait_for_everyone()  # every process has written its part before the folder is renamed
        if self.accelerator.is_main_process:
            (tmp / "training_state.json").write_text(json.dumps({"step": step, "history": history.records}))
            replace_directory(tmp, target)
            self._prune()
        self.accelerator.wait_for_everyone()
        return target

    def load(self, path: Path, extra: dict[str, torch.Tensor] | None = None, allow_inexact: bool = False) -> tuple[int, LossHistory]:
        """Restore accelerate's state (models, optimizers, schedulers, RNGs) and copy the saved `extra` tensors into
        the given ones; return the step and the loss history. The saved data position is left in `data_state`.

        Every part is checked first: an unreadable one stops the resume with an error naming the file, since accelerate
        would skip a bad RNG state with an INFO line and the run would silently stop being exact. With
        `allow_inexact`, a bad RNG state is a warning and the run continues with fresh random numbers.
        """
        self._check_readable(path, allow_inexact)
        self.accelerator.load_state(path)
        state = json.loads((path / "training_state.json").read_text())
        rank = self.accelerator.process_index
        saved = load_file(path / f"extra_{rank}.safetensors")
        for name, tensor in (extra or {}).items():
            if name not in saved:
                raise ValueError(f"Checkpoint {str(path)!r} has no `{name}`: was it saved with the same options?")
            with torch.no_grad():
                local_shard(tensor).copy_(saved[name])
        self.data_state = json.loads((path / f"data_state_{rank}.json").read_text())
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
        rank = self.accelerator.process_index
        for own in (f"extra_{rank}.safetensors", f"data_state_{rank}.json"):
            if not (path / own).is_file():
                raise bad(path / own, f"missing; was the checkpoint written by {self.accelerator.num_processes} processes?")
        rng_file = path / f"random_states_{rank}.pkl"
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




def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a tensor that FSDP2 sharded (a DTensor), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor.detach()
