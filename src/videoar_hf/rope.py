"""Multi-scale Temporal RoPE (docs/method.md §4).

RoPE factorized over (time, height, width): the head dimension is split across the three axes. Text token i sits
at (i, i, i), which is plain 1D RoPE. A video token of frame t, grid cell (h, w) sits at (t + L, h + L, w + L), with
L the number of (unpadded) text tokens of its sample. Scale is not an axis: it enters through the scale embedding.
"""

from typing import Sequence

import torch
from torch import nn


def text_position_ids(batch_size: int, text_length: int, device=None) -> torch.Tensor:
    """`(B, L, 3)` positions (i, i, i) of the text prefix."""
    i = torch.arange(text_length, device=device, dtype=torch.float32)
    return i[None, :, None].expand(batch_size, text_length, 3)


def video_position_ids(
    coords_N4: torch.Tensor,
    text_lengths_B: torch.Tensor,
    scale_sizes: Sequence[tuple[int, int]],
    spatial_positions: str = "raw",
) -> torch.Tensor:
    """`(B, N, 3)` positions of video tokens given their (frame, scale, row, column) coordinates.

    `spatial_positions="finest"` rescales each scale's grid onto the finest grid (Infinity's practice); `"raw"` keeps
    the grid indices (the paper's figure).
    """
    frame, scale, row, col = coords_N4.float().unbind(-1)
    if spatial_positions == "finest":
        sizes = torch.tensor(scale_sizes, dtype=torch.float32, device=coords_N4.device)
        row = row * sizes[-1, 0] / sizes[scale.long(), 0]
        col = col * sizes[-1, 1] / sizes[scale.long(), 1]
    position_N3 = torch.stack([frame, row, col], dim=-1)
    return position_N3[None] + text_lengths_B.float().to(coords_N4.device)[:, None, None]


class MultiScaleTemporalRoPE(nn.Module):
    """Turns `(B, N, 3)` positions into the `(cos, sin)` pair, each `(B, N, head_dim)`.

    The inverse frequencies are recomputed on each call rather than stored: a non-persistent buffer would reload as
    garbage from transformers' meta-device init, and the cost is a few hundred flops per forward.
    """

    def __init__(self, axes_dim: Sequence[int], theta: float = 10000.0):
        super().__init__()
        self.axes_dim = list(axes_dim)
        self.theta = theta

    def forward(self, position_ids_BN3: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, device=position_ids_BN3.device, dtype=torch.float32) / dim
            inv_freq = 1.0 / (self.theta**exponent)
            angles.append(position_ids_BN3[..., axis, None].float() * inv_freq)
        angles_BNh = torch.cat(angles, dim=-1)
        emb_BNd = torch.cat([angles_BNh, angles_BNh], dim=-1)
        return emb_BNd.cos().to(dtype), emb_BNd.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q_BHNd, k_BHNd, cos_BNd, sin_BNd):
    cos, sin = cos_BNd[:, None], sin_BNd[:, None]
    return q_BHNd * cos + rotate_half(q_BHNd) * sin, k_BHNd * cos + rotate_half(k_BHNd) * sin
