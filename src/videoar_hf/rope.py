"""Multi-scale Temporal RoPE (docs/method.md §4).

RoPE factorized over (time, height, width): the head dimension is split across the three axes. Text token i sits
at (i, i, i), which is plain 1D RoPE; i counts the real tokens before it, so padding on either side of a prompt
moves no position. A video token of frame t, grid cell (h, w) sits at (t + L, h + L, w + L), with L the number of
real text tokens of its sample. Scale is not an axis: it enters through the scale embedding. How a coarse scale's
cell (h, w) maps onto the grid is `rope_spatial_positions` (`spatial_positions` below).
"""

from typing import Sequence

import torch
from torch import nn


def text_position_ids(batch_size: int, text_length: int, device=None) -> torch.Tensor:
    """`(B, L, 3)` positions (i, i, i) of an unpadded or right-padded prefix; `prefix_position_ids` reads the mask."""
    i = torch.arange(text_length, device=device, dtype=torch.float32)
    return i[None, :, None].expand(batch_size, text_length, 3)


def prefix_position_ids(valid_BL: torch.Tensor) -> torch.Tensor:
    """`(B, L, 3)` positions (i, i, i) of the prefix, i = the number of real tokens up to this one, minus one: the
    same positions whichever side the tokenizer pads (a padding token takes its neighbour's, and is never seen)."""
    i_BL = (valid_BL.long().cumsum(-1) - 1).clamp(min=0).float()
    return i_BL[..., None].expand(*valid_BL.shape, 3)


def spatial_positions_on_grid(
    index_N: torch.Tensor, cells_N: torch.Tensor, finest_cells: int, spatial_positions: str
) -> torch.Tensor:
    """Cell `index` of a scale `cells` wide, as a RoPE position along one spatial axis of `finest_cells` cells.

    `"raw"`: the index itself (the paper's figure). `"finest"`: `round(index * finest / cells)`, ties to even
    (Infinity's `rope2d_normalized_by_hw=2`, which looks up integer positions of the finest grid). `"centre"`: the
    cell's centre in finest-grid coordinates, `(index + 0.5) * finest / cells - 0.5` (ERNIE 5.0's reading)."""
    if spatial_positions == "raw":
        return index_N.float()
    ratio_N = (finest_cells / cells_N.double()).float()  # a float64 quotient rounded once to float32, as Infinity's
    if spatial_positions == "finest":
        return torch.round(index_N.float() * ratio_N)
    if spatial_positions == "centre":
        return (index_N.float() + 0.5) * ratio_N - 0.5
    raise ValueError(f"Unknown `rope_spatial_positions` {spatial_positions!r}; use 'raw', 'finest' or 'centre'.")


def video_position_ids(
    coords_N4: torch.Tensor,
    text_lengths_B: torch.Tensor,
    scale_sizes: Sequence[tuple[int, int]],
    spatial_positions: str = "raw",
) -> torch.Tensor:
    """`(B, N, 3)` positions of video tokens given their (frame, scale, row, column) coordinates, after a prefix of
    `text_lengths_B` real tokens; `spatial_positions` as in `spatial_positions_on_grid`."""
    frame_N, scale_N, row_N, col_N = coords_N4.unbind(-1)
    sizes_K2 = torch.tensor(scale_sizes, device=coords_N4.device)
    rows_N, cols_N = sizes_K2[scale_N].unbind(-1)
    position_N3 = torch.stack([
        frame_N.float(),
        spatial_positions_on_grid(row_N, rows_N, scale_sizes[-1][0], spatial_positions),
        spatial_positions_on_grid(col_N, cols_N, scale_sizes[-1][1], spatial_positions),
    ], dim=-1)  # fmt: skip
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
