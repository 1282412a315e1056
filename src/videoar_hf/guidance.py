"""Classifier-free guidance schedules over (frame, scale) (docs/method.md §8).

The pipeline combines logits as `l = l_u + g[t, k] * (l_c - l_u)`. A schedule is a `(latent frames, scales)` table.
"""

import torch

TEXT_TO_VIDEO = "text-to-video"
CLASS_CONDITIONAL = "class-conditional"
GUIDANCE_SCHEDULES = (TEXT_TO_VIDEO, CLASS_CONDITIONAL)


def falling_guidance(num_frames: int, num_scales: int, start: float = 5.0, end: float = 3.0) -> torch.Tensor:
    """Text-to-video: guidance falls linearly from `start` to `end` across frames and scales (§8: 5 -> 3)."""
    steps = torch.linspace(0, 1, num_frames * num_scales, dtype=torch.float64)
    return (start + (end - start) * steps).reshape(num_frames, num_scales)


def rising_guidance(
    num_frames: int, num_scales: int, first_start: float = 1.0, first_end: float = 5.0, last: float = 10.0
) -> torch.Tensor:
    """Class-conditional: the first scale's guidance rises `first_start -> first_end` across frames, then rises
    linearly inside each frame up to `last` (§8: 1 -> 5, then up to 10)."""
    first_T1 = torch.linspace(first_start, first_end, num_frames, dtype=torch.float64)[:, None]
    within_1K = torch.linspace(0, 1, num_scales, dtype=torch.float64)[None, :]
    return first_T1 + (last - first_T1) * within_1K


def guidance_table(guidance_scale, num_frames: int, num_scales: int) -> torch.Tensor:
    """Resolve `guidance_scale` (a number, a schedule name, or a `(frames, scales)` table) into a float64 table."""
    if isinstance(guidance_scale, str):
        if guidance_scale == TEXT_TO_VIDEO:
            return falling_guidance(num_frames, num_scales)
        if guidance_scale == CLASS_CONDITIONAL:
            return rising_guidance(num_frames, num_scales)
        raise ValueError(
            f"`guidance_scale` {guidance_scale!r} is not a known schedule; use a number, a (frames, scales) table, "
            f"or one of {list(GUIDANCE_SCHEDULES)}."
        )
    table = torch.as_tensor(guidance_scale, dtype=torch.float64)
    if table.ndim == 0:
        table = table.expand(num_frames, num_scales)
    if table.shape != (num_frames, num_scales):
        raise ValueError(
            f"`guidance_scale` table has shape {tuple(table.shape)}, but this video needs one value per latent frame "
            f"and scale: ({num_frames}, {num_scales})."
        )
    if not torch.isfinite(table).all() or (table < 0).any():
        raise ValueError(f"`guidance_scale` values must be finite and >= 0, got {table.tolist()}.")
    return table
