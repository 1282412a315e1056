"""Random Frame Mask (docs/method.md §6). Training only: inference never imports this module."""

import torch

from .attention_mask import frame_window_keep
from .sampling import uniform_noise


def random_frame_keep(
    batch_size: int,
    num_frames: int,
    mask_prob: float,
    window: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    device=None,
) -> torch.Tensor:
    """`(B, T, T)` table: frame t keeps the earlier frame s with probability `1 - mask_prob`, independently per pair,
    and only inside the causal window of `window` past frames. A frame always keeps itself. `generator` may be one
    per sample."""
    keep_BTT = uniform_noise((batch_size, num_frames, num_frames), generator, "cpu") >= mask_prob
    window_keep = frame_window_keep(batch_size, num_frames, window)
    if window_keep is not None:
        keep_BTT &= window_keep
    keep_BTT |= torch.eye(num_frames, dtype=torch.bool)
    return keep_BTT.to(device)
