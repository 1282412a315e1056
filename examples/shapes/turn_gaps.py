#!/usr/bin/env python
"""Where a model's long videos turn: for the first N cases of `videoar eval`'s long suite (129 frames), each turn of
the main object as (frame, edge it was heading for, gap in px between its box and that edge), then the gaps of
first and of later turns. A bouncing object should turn within `EDGE_MARGIN` px of the edge (TUNING.md, session 15).

    python examples/shapes/turn_gaps.py [pipeline_folder] [num_prompts]
"""

import sys

import numpy as np
import torch

from videoar_hf import VideoARPipeline, shipped_model_path
from videoar_hf.evaluation import EDGE_MARGIN, analyse_clip, long_suite, prompt_for

AXES = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
EDGES = {(0, -1): "left", (0, 1): "right", (1, -1): "top", (1, 1): "bottom"}


def turns(frames, motion: str) -> list[tuple[int, str, int]]:
    analysis = analyse_clip(frames)
    axis, _ = AXES[motion]
    heading, found = None, []
    for t, (before, after) in enumerate(zip(analysis.frames, analysis.frames[1:])):
        if before.mask is None or after.mask is None:
            continue
        move = after.centroid[axis] - before.centroid[axis]
        if abs(move) < 0.5:
            continue
        if heading is not None and np.sign(move) != heading:
            extent = np.nonzero(before.mask.any(axis=axis))[0]  # the columns (x) or rows (y) the box covers
            gap = before.mask.shape[1 - axis] - 1 - extent[-1] if heading > 0 else extent[0]
            found.append((t, EDGES[axis, heading], int(gap)))
        heading = int(np.sign(move))
    return found


def main(model: str, num_prompts: int) -> None:
    pipe = VideoARPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    first, later = [], []
    for triple, seed in long_suite(num_prompts).cases:
        prompt = prompt_for(triple, seed)
        video = pipe(prompt, num_frames=129, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
        found = turns(video, triple.motion)
        print(prompt, found, flush=True)
        first += [gap for _, _, gap in found[:1]]
        later += [gap for _, _, gap in found[1:]]
    print("first-turn gaps", sorted(first))
    print("later-turn gaps", sorted(later))
    print(f"later turns within {EDGE_MARGIN} px: {sum(g <= EDGE_MARGIN for g in later)} of {len(later)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else shipped_model_path(), int(sys.argv[2]) if len(sys.argv) > 2 else 12)
