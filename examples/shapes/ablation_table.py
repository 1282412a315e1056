"""The ablation ladder's table (docs/ablations.md) from each row's `videoar eval --suites long` reports: per row and
length, the mean over the prompts ± its standard error, so that a difference between rows can be read against the
spread between prompts; then shape kept per prompted shape.

    python examples/shapes/ablation_table.py outputs/ablations base mst_rope time_cfec inheritance frame_mask
"""

import json
import sys
from pathlib import Path

import numpy as np

from videoar_hf.shapes import SHAPES

# (column title, the per-case value, as a percentage)
COLUMNS = (
    ("one object %", lambda sample: sample["analysis"]["one_object_share"], True),
    ("colour kept %", lambda sample: sample["frames"]["colour_kept"], True),
    ("shape kept %", lambda sample: sample["frames"]["shape_kept"], True),
    ("bounce %", lambda sample: sample["frames"]["bounce"], True),
    ("first error frame", lambda sample: sample["frames"]["first_error_frame"], False),
)


def cell(values: list[float], percent: bool) -> str:
    scale = 100 if percent else 1
    error = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{np.mean(values) * scale:.1f} ± {error * scale:.1f}"


def long_samples(row_dir: Path) -> list[tuple[str, list[dict]]]:
    """(frames, the long suite's per-prompt records) of each `eval_<frames>` report of a row, shortest first."""
    reports = sorted(row_dir.glob("eval_*/metrics.json"), key=lambda path: int(path.parent.name[5:]))
    return [(report.parent.name[5:], json.loads(report.read_text())["suites"]["long"]["samples"]) for report in reports]


def shape_table(work: Path, rows: list[str]) -> str:
    """Shape kept, % of frames, per prompted shape: which shapes a row loses."""
    lines = ["| row | frames | " + " | ".join(f"{shape} kept %" for shape in SHAPES) + " |",
             "|---" * (len(SHAPES) + 2) + "|"]  # fmt: skip
    for row in rows:
        for frames, samples in long_samples(work / row):
            cells = [cell([s["frames"]["shape_kept"] for s in samples if s["target"]["shape"] == shape], True) for shape in SHAPES]
            lines.append(f"| {row} | {frames} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(work: Path, rows: list[str]) -> str:
    lines = ["| row | frames | " + " | ".join(title for title, _, _ in COLUMNS) + " | final loss |",
             "|---" * (len(COLUMNS) + 3) + "|"]  # fmt: skip
    for row in rows:
        history = json.loads((work / row / "history.json").read_text())
        losses = [entry["loss"] for entry in history][-50:]  # the last 50 steps
        for frames, samples in long_samples(work / row):
            cells = [cell([value(sample) for sample in samples], percent) for _, value, percent in COLUMNS]
            lines.append(f"| {row} | {frames} | " + " | ".join(cells) + f" | {np.mean(losses):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2:]) + "\n" + shape_table(Path(sys.argv[1]), sys.argv[2:]), end="")
