#!/usr/bin/env python
"""How square a model's squares are (examples/shapes/TUNING.md, sessions 14 and 16).

Generates the square prompts of `videoar eval`'s train suite (17 frames, their seeds) and prints the main object's
median box fill in the first pixel frame and in the later ones, and how many clips read "square" (the evaluator's
rule: box fill at least `SQUARE_MIN_FILL`, in the majority of frames).

    python examples/shapes/square_fill.py [pipeline_folder] [num_prompts]
"""

import sys

import numpy as np
import torch

from videoar_hf import VideoARPipeline, shipped_model_path
from videoar_hf.evaluation import SQUARE_MIN_FILL, analyse_clip, box_fill, prompt_for, train_suite


def main(model: str, num_prompts: int) -> None:
    pipe = VideoARPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    cases = [(triple, seed) for triple, seed in train_suite(300).cases if triple.shape == "square"][:num_prompts]
    first, later, read_square = [], [], 0
    for triple, seed in cases:
        video = pipe(prompt_for(triple, seed), generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
        analysis = analyse_clip(video)
        fills = [box_fill(frame.mask) if frame.mask is not None else 0.0 for frame in analysis.frames]
        first.append(fills[0])
        later += fills[1:]
        read_square += analysis.shape == "square"
    print(f"{len(cases)} square prompts: median box fill, first frames {np.median(first):.3f}, later frames "
          f"{np.median(later):.3f}; later frames >= {SQUARE_MIN_FILL}: {np.mean(np.array(later) >= SQUARE_MIN_FILL):.0%}; "
          f"read square {read_square} of {len(cases)}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(shipped_model_path()), int(sys.argv[2]) if len(sys.argv) > 2 else 32)
