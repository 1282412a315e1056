"""The ablation ladder's table (docs/ablations.md) from each row's `videoar eval --suites long` reports.

    python examples/shapes/ablation_table.py outputs/ablations base mst_rope time_cfec inheritance frame_mask
"""

import json
import sys
from pathlib import Path

# (metric key, column title, as a percentage)
COLUMNS = (
    ("one_object", "one object %", True),
    ("colour_kept", "colour kept %", True),
    ("shape_kept", "shape kept %", True),
    ("bounce", "bounce %", True),
    ("first_error_frame", "first error frame", False),
)


def table(work: Path, rows: list[str]) -> str:
    lines = ["| row | frames | " + " | ".join(title for _, title, _ in COLUMNS) + " | final loss |",
             "|---" * (len(COLUMNS) + 3) + "|"]  # fmt: skip
    for row in rows:
        history = json.loads((work / row / "history.json").read_text())
        losses = [entry["loss"] for entry in history if "loss" in entry][-4:]  # the last 200 steps at logging every 50
        for report in sorted((work / row).glob("eval_*/metrics.json"), key=lambda path: int(path.parent.name[5:])):
            metrics = json.loads(report.read_text())["suites"]["long"]["metrics"]
            cells = [f"{metrics[key] * 100:.1f}" if percent else f"{metrics[key]:.1f}" for key, _, percent in COLUMNS]
            frames = report.parent.name[5:]
            lines.append(f"| {row} | {frames} | " + " | ".join(cells) + f" | {sum(losses) / len(losses):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), sys.argv[2:]), end="")
