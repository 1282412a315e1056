#!/usr/bin/env python
"""One PNG of the recipe's runs, for the model card: tokenizer PSNR (stills; clips, then the decoder alone, four
times, then tau 2) and transformer loss (the first and second run, stage III on bouncing 33- and 65-frame clips and
mid-path, then on the tau-2 latents: plain clips and stage III). A panel's
runs follow each other on its step axis; runs whose `history.json` is missing are left out, and so are panels
without any.

    python examples/shapes/plot_curves.py outputs/shapes model_cards/assets/videoar-shapes-loss-curves.png
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from videoar_hf.training import LossHistory  # noqa: E402

PANELS = (
    (("tokenizer_stills",), "psnr", "tokenizer, stills: PSNR (dB)"),
    (
        ("tokenizer", "tokenizer_decoder", "tokenizer_decoder2", "tokenizer_decoder3", "tokenizer_decoder4",
         "tokenizer_tau2"),
        "psnr",
        "tokenizer, clips, then decoder: PSNR (dB)",
    ),
    (
        ("transformer", "transformer_long", "transformer_bounce", "transformer_bounce_long", "transformer_bounce_mid",
         "transformer_tau2", "transformer_bounce_tau2"),
        "loss",
        "transformer: bitwise cross-entropy",
    ),
)
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")


def smoothed(values: list[float], window: int = 25) -> list[float]:
    """Trailing mean: per-step values of small batches are noisy."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def main(work_dir: str, output: str) -> None:
    # panels none of whose runs is in `work_dir` are left out, e.g. for a folder of the tau-2 runs alone
    panels = [(runs, key, title) for runs, key, title in PANELS if any(_history(work_dir, run).exists() for run in runs)]
    if not panels:
        sys.exit(f"plot_curves.py: no run's history.json in {work_dir}")
    figure, axes = plt.subplots(1, len(panels), figsize=(13 * len(panels) / len(PANELS), 3.6), squeeze=False)
    for axis, (runs, key, title) in zip(axes[0], panels):
        offset = 0
        for run, colour in zip(runs, COLOURS):
            path = _history(work_dir, run)
            if not path.exists():
                continue
            records = [r for r in LossHistory.load(path).records if key in r]
            steps, values = [offset + r["step"] for r in records], [r[key] for r in records]
            axis.plot(steps, values, linewidth=0.5, alpha=0.3, color=colour)
            axis.plot(steps, smoothed(values), linewidth=1.2, color=colour, label=run)
            offset = steps[-1]
        axis.set(title=title, xlabel="step")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    print(output)


def _history(work_dir: str, run: str) -> Path:
    return Path(work_dir) / run / "history.json"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_curves.py WORK_DIR OUTPUT_PNG")
    main(sys.argv[1], sys.argv[2])
