"""The scale schedule and the token layout it implies.

This is the one place that turns a latent grid into the coarse-to-fine list of token-map sizes. The tokenizer's
quantizer, the transformer and the pipeline all call `get_scale_sizes`, so the schedule is never written twice.
"""

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch


# the aspect-ratio templates, as (height, width) proportions, named width:height as screens are; 7:4 is the paper's
# 672x384 text-to-video size (docs/method.md §7)
ASPECT_RATIOS = {"1:1": (1, 1), "4:3": (3, 4), "3:4": (4, 3), "16:9": (9, 16), "9:16": (16, 9), "7:4": (4, 7), "4:7": (7, 4)}


def get_scale_sizes(scale_schedule: Sequence[int], latent_height: int, latent_width: int) -> list[tuple[int, int]]:
    """Token-map sizes `(h_k, w_k)`, coarse to fine, for one latent frame of `latent_height x latent_width`.

    `scale_schedule` lists side lengths for square grids, as VAR's `patch_nums` (e.g. `(1, 2, 3, 4, 6, 8, 10, 13, 16)`).
    A grid of longer side `n` uses the prefix of the schedule that ends at `n`, so one model serves every resolution
    whose longer latent side is in the schedule; the shorter side is scaled by the aspect ratio, scale by scale (the
    template of that aspect ratio, in the spirit of Infinity's). The paper does not give its schedule
    (docs/method.md §2): it is data in the configs. An unserved grid is an error naming the nearest served ones.
    """
    side = max(latent_height, latent_width)
    if side not in scale_schedule:
        nearest = ", ".join(f"{h}x{w}" for h, w in nearest_served_grids(scale_schedule, latent_height, latent_width))
        raise ValueError(
            f"The scale schedule {list(scale_schedule)} cannot serve a {latent_height}x{latent_width} latent grid: its "
            f"longer side {side} must be one of the schedule's entries. Nearest served grids: {nearest}."
        )
    prefix = list(scale_schedule)[: list(scale_schedule).index(side) + 1]
    # round half up, and never below one token
    return [
        (max(1, int(s * latent_height / side + 0.5)), max(1, int(s * latent_width / side + 0.5))) for s in prefix
    ]


def aspect_ratio_templates(scale_schedule: Sequence[int]) -> dict[str, list[tuple[int, int]]]:
    """The latent grids a schedule serves at each named aspect ratio (`ASPECT_RATIOS`), small to large; each grid's
    scale sizes are `get_scale_sizes(scale_schedule, *grid)`."""
    templates = {}
    for name, (rh, rw) in ASPECT_RATIOS.items():
        grids = [_grid_at(side, rh, rw) for side in scale_schedule]
        templates[name] = list(dict.fromkeys(grids))  # small sides can round two ratios to one grid
    return templates


def nearest_served_grids(scale_schedule: Sequence[int], latent_height: int, latent_width: int, count: int = 3):
    """The served grids of the named aspect ratios closest to `latent_height x latent_width`: nearest aspect ratio
    first, then nearest area."""
    grids = {grid for grids in aspect_ratio_templates(scale_schedule).values() for grid in grids}
    ratio, area = latent_height / latent_width, latent_height * latent_width

    def distance(grid):
        return (round(abs(math.log(grid[0] / grid[1] / ratio)), 2), abs(grid[0] * grid[1] - area))

    return sorted(grids, key=distance)[:count]


def _grid_at(side: int, rh: int, rw: int) -> tuple[int, int]:
    """The grid of longer side `side` at proportions `rh:rw`, the shorter side rounded half up, at least 1."""
    longer = max(rh, rw)
    return max(1, int(side * rh / longer + 0.5)), max(1, int(side * rw / longer + 0.5))


def validate_scale_schedule(scale_schedule: Sequence[int], name: str = "scale_schedule") -> None:
    if len(scale_schedule) == 0 or any(int(s) != s or s < 1 for s in scale_schedule):
        raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {scale_schedule}.")
    if any(b <= a for a, b in zip(scale_schedule, scale_schedule[1:])):
        raise ValueError(f"`{name}` must be strictly increasing (coarse to fine), got {scale_schedule}.")


@dataclass(frozen=True)
class TokenLayout:
    """Where every video token sits in the sequence `[frame 0: scales 1..K][frame 1: scales 1..K]...`.

    A *block* is one scale of one frame, `h_k * w_k` tokens; block `b = t * K + k` is one forward pass at sampling.
    """

    num_frames: int
    scale_sizes: tuple[tuple[int, int], ...]

    @property
    def num_scales(self) -> int:
        return len(self.scale_sizes)

    @property
    def num_blocks(self) -> int:
        return self.num_frames * self.num_scales

    @cached_property
    def tokens_per_frame(self) -> int:
        return sum(h * w for h, w in self.scale_sizes)

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def block_slice(self, frame: int, scale: int) -> slice:
        start = frame * self.tokens_per_frame + sum(h * w for h, w in self.scale_sizes[:scale])
        h, w = self.scale_sizes[scale]
        return slice(start, start + h * w)

    def token_coords(self, frames: range | None = None, scales: range | None = None) -> torch.Tensor:
        """`(N, 4)` long tensor of (frame, scale, row, column) for the blocks of `frames` x `scales`, in order."""
        frames = range(self.num_frames) if frames is None else frames
        scales = range(self.num_scales) if scales is None else scales
        coords = []
        for t in frames:
            for k in scales:
                h, w = self.scale_sizes[k]
                rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                block = torch.stack([torch.full_like(rows, t), torch.full_like(rows, k), rows, cols], dim=-1)
                coords.append(block.reshape(-1, 4))
        return torch.cat(coords)
