#!/usr/bin/env python
"""Does a model keep an object's speed after a turn it was shown? From real bouncing clips of the training triples, a
real 15-frame prefix (8 latent frames on tau 2) is given as `video=` and continued to 33 frames, one window. Prefixes
of two kinds: ending 2-6 frames after a turn ("turn"; the first such start of each clip, which is almost always 2
frames after it), or holding no turn with none due ("straight"). Prints, per kind, the generated/real axis speed
over the new frames, and over the first two alone (the first generated latent frame), along the real direction
(TUNING.md, sessions 26-27). CAPTION picks the prompt: `own` (default, the clip's caption, naming the path's first
direction as a user's prompt does), `empty`, or `current` (a caption naming the direction the object moves at the
prefix's end, which no user could give; TUNING.md, session 38).

    python examples/shapes/probe_turn_speed.py [pipeline_folder] [clips_per_kind] [device] [caption]
"""

import sys

import numpy as np
import torch

from videoar_hf import VideoARPipeline, shipped_model_path
from videoar_hf.evaluation import analyse_clip
from videoar_hf.shapes import caption_for, sample_clip, training_triples, turn_frames

PREFIX_FRAMES, TOTAL_FRAMES = 15, 33
FRAMES_SINCE_TURN = range(2, 7)


def prefix_kind(turns: np.ndarray, start: int) -> str | None:
    """"turn", "straight" or None (neither) for the prefix starting at frame `start` of a path with these turns."""
    end, stop = start + PREFIX_FRAMES - 1, start + TOTAL_FRAMES
    inside, due = turns[(turns > start) & (turns < end)], turns[(turns > end) & (turns < stop)]
    if len(inside) and not len(due) and end - inside[-1] in FRAMES_SINCE_TURN:
        return "turn"
    if not len(turns[(turns >= start) & (turns < stop)]):
        return "straight"
    return None


def draw_cases(per_kind: int, seed: int = 12345) -> dict[str, list]:
    """`per_kind` (clip, start) for each kind, one per clip, from a fixed generator."""
    rng, cases = np.random.default_rng(seed), {"turn": [], "straight": []}
    while min(len(found) for found in cases.values()) < per_kind:
        clip = sample_clip(rng, triples=training_triples(), num_frames=80, bounce=True)
        turns = turn_frames(clip.centres[:, clip.axis])
        for start in range(40):
            kind = prefix_kind(turns, start)
            if kind and len(cases[kind]) < per_kind:
                cases[kind].append((clip, start))
                break
    return cases


def prompt_for_case(clip, start: int, caption: str, rng: np.random.Generator) -> str:
    """The prompt the prefix of `clip` from frame `start` is continued under (see the module's CAPTION)."""
    if caption == "own":
        return clip.caption
    if caption == "empty":
        return ""
    end = start + PREFIX_FRAMES - 1
    forward = clip.centres[end, clip.axis] > clip.centres[end - 1, clip.axis]
    motion = {(0, True): "right", (0, False): "left", (1, True): "down", (1, False): "up"}[clip.axis, bool(forward)]
    return caption_for(clip.colour, clip.shape, motion, rng)


def speed_ratios(pipe, cases: list, batch_size: int = 8, caption: str = "own") -> tuple[np.ndarray, np.ndarray]:
    """Per clip: generated/real mean axis speed over the new frames, and the signed speed along the real direction
    over the first two new steps."""
    overall, first, rng = [], [], np.random.default_rng(0)
    for start_index in range(0, len(cases), batch_size):
        batch = cases[start_index : start_index + batch_size]
        prefixes = np.stack([clip.video[start : start + PREFIX_FRAMES] for clip, start in batch]) / 255
        prompts = [prompt_for_case(clip, start, caption, rng) for clip, start in batch]
        videos = pipe(prompts, video=prefixes.astype(np.float32), num_frames=TOTAL_FRAMES,
                      generator=[torch.Generator().manual_seed(start_index + i) for i in range(len(batch))],
                      output_type="np").frames  # fmt: skip
        for (clip, start), frames in zip(batch, videos):
            axis = clip.axis
            new = slice(PREFIX_FRAMES - 1, TOTAL_FRAMES)  # the last given frame, then the generated ones
            drawn = np.array([f.centroid[axis] if f.centroid else np.nan for f in analyse_clip(frames).frames])[new]
            real_steps = np.diff(clip.centres[start : start + TOTAL_FRAMES, axis][new])
            overall.append(np.nanmean(np.abs(np.diff(drawn))) / np.abs(real_steps).mean())
            first.append(np.nanmean(np.diff(drawn)[:2] * np.sign(real_steps[:2])) / np.abs(real_steps[:2]).mean())
    return np.array(overall), np.array(first)


def main(model: str, per_kind: int, device: str = "cpu", caption: str = "own") -> None:
    if caption not in ("own", "empty", "current"):
        raise SystemExit(f"caption must be one of own, empty, current, got {caption!r}")
    pipe = VideoARPipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    for kind, cases in draw_cases(per_kind).items():
        ratios, first = speed_ratios(pipe, cases, caption=caption)
        print(f"{kind}: {len(ratios)} clips, generated/real speed {np.nanmean(ratios):.2f}, "
              f"below half in {int(np.sum(ratios < 0.5))}; first latent frame {np.nanmean(first):.2f}")


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 4
    main(args[0] or str(shipped_model_path()), int(args[1] or 32), args[2] or "cpu", args[3] or "own")
