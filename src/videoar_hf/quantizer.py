"""Temporal-independent multi-scale residual bitwise quantization (BSQ), docs/method.md §2.

Every latent frame is quantized on its own: frames are folded into the batch. For scale k with size (h_k, w_k):
`q_k = BSQ(down(F - F_hat))`, `F_hat += up(q_k)`. A token is the d bits of one position of `q_k`.

Shapes: `latents_BdTHW` is the encoder output; per-scale bits are `(B, T, h_k, w_k, d)` bool tensors.
"""

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .sampling import uniform_noise


@dataclass
class ResidualQuantization:
    """What one pass of residual quantization produces, all in scale order.

    bits: the target bits of every scale, `(B, T, h_k, w_k, d)`.
    scale_inputs: the transformer's input features for every scale, `(B, T, h_k, w_k, d)` (docs/method.md §3): the running
        reconstruction before scale k resampled to (h_k, w_k); for k = 0 the previous frame's reconstruction (zeros for
        frame 0, where the transformer uses its start token instead).
    features: the cumulative reconstruction `F_hat`, `(B, d, T, H, W)`.
    """

    bits: list[torch.Tensor]
    scale_inputs: list[torch.Tensor]
    features: torch.Tensor


class MultiScaleBitwiseQuantizer(nn.Module):
    """Parameter-free multi-scale BSQ. `upsample_mode` is our choice (the paper is silent); `down` is area averaging."""

    def __init__(self, latent_bits: int, upsample_mode: str = "bilinear"):
        super().__init__()
        if upsample_mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"`upsample_mode` must be 'nearest', 'bilinear' or 'bicubic', got {upsample_mode!r}.")
        self.latent_bits = latent_bits
        self.upsample_mode = upsample_mode

    def codes_from_bits(self, bits: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """BSQ code of each d-bit token: `sign / sqrt(d)`, bits on the last axis."""
        return (bits.to(dtype) * 2 - 1) / math.sqrt(self.latent_bits)

    @staticmethod
    def downsample(x_NdHW: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x_NdHW if tuple(x_NdHW.shape[-2:]) == tuple(size) else F.interpolate(x_NdHW, size=size, mode="area")

    def upsample(self, x_NdHW: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x_NdHW.shape[-2:]) == tuple(size):
            return x_NdHW
        align = None if self.upsample_mode == "nearest" else False
        return F.interpolate(x_NdHW, size=size, mode=self.upsample_mode, align_corners=align)

    def residual_quantize(
        self,
        latents_BdTHW: torch.Tensor,
        scale_sizes: Sequence[tuple[int, int]],
        flip_rates_BTK: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> ResidualQuantization:
        """Quantize every frame over `scale_sizes`.

        With `flip_rates_BTK`, each target bit of scale k is flipped with that probability before it joins the
        reconstruction, and later targets are computed against the corrupted history: this is the self-correcting
        pyramid of Cross-Frame Error Correction (docs/method.md §5). Without it, this is the plain quantizer.
        """
        B, d, T, H, W = latents_BdTHW.shape
        if d != self.latent_bits:
            raise ValueError(f"Expected {self.latent_bits} latent channels, got {d}.")
        latents_NdHW = latents_BdTHW.transpose(1, 2).reshape(B * T, d, H, W)
        features_NdHW = torch.zeros_like(latents_NdHW)
        bits, next_inputs = [], []
        for k, size in enumerate(scale_sizes):
            bits_NhwD = self.downsample(latents_NdHW - features_NdHW, size).permute(0, 2, 3, 1) >= 0
            bits.append(bits_NhwD)
            if flip_rates_BTK is not None:
                flip_rate_N = flip_rates_BTK[:, :, k].reshape(B * T, 1, 1, 1).to(latents_NdHW.device)
                noise = uniform_noise((B, T, *bits_NhwD.shape[1:]), generator, bits_NhwD.device).flatten(0, 1)
                bits_NhwD = bits_NhwD ^ (noise < flip_rate_N)
            next_size = scale_sizes[(k + 1) % len(scale_sizes)]
            features_NdHW, next_input_NhwD = self.accumulate(features_NdHW, bits_NhwD, next_size)
            next_inputs.append(next_input_NhwD)

        def unfold(x_NhwD: torch.Tensor) -> torch.Tensor:
            return x_NhwD.reshape(B, T, *x_NhwD.shape[1:])

        # the last scale's next input is the next frame's first (docs/method.md §3); frame 0 starts from zeros
        first_BThwD = unfold(next_inputs.pop()).roll(1, dims=1)
        first_BThwD[:, 0] = 0
        return ResidualQuantization(
            bits=[unfold(b) for b in bits],
            scale_inputs=[first_BThwD] + [unfold(x) for x in next_inputs],
            features=features_NdHW.reshape(B, T, d, H, W).transpose(1, 2),
        )

    def accumulate(
        self, features_NdHW: torch.Tensor, bits_NhwD: torch.Tensor | None, next_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next-scale rule, the one place it is written: add a scale's codes `bits_NhwD` (if any) into the running
        reconstruction `F_hat`, and return it with the next block's input, `F_hat` resampled to `next_size`
        `(N, h', w', d)`. Training, sampling and the step from a frame's last scale to the next frame's first all use it.
        """
        if bits_NhwD is not None:
            codes_NdHW = self.codes_from_bits(bits_NhwD, features_NdHW.dtype).permute(0, 3, 1, 2)
            features_NdHW = features_NdHW + self.upsample(codes_NdHW, tuple(features_NdHW.shape[-2:]))
        return features_NdHW, self.downsample(features_NdHW, next_size).permute(0, 2, 3, 1)

    def bits_to_features(
        self, bits: Sequence[torch.Tensor], size: tuple[int, int], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Cumulative reconstruction `(B, d, T, H, W)` from per-scale bits `(B, T, h_k, w_k, d)`.

        Same operations in the same order as `residual_quantize`, so the round trip is exact.
        """
        B, T = bits[0].shape[:2]
        features_NdHW = torch.zeros(B * T, self.latent_bits, *size, dtype=dtype, device=bits[0].device)
        for bits_BThwD in bits:
            features_NdHW, _ = self.accumulate(features_NdHW, bits_BThwD.flatten(0, 1), bits[0].shape[2:4])
        return features_NdHW.reshape(B, T, self.latent_bits, *size).transpose(1, 2)


def pack_scales(per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
    """`[(B, T, h_k, w_k, C)]` -> `(B, N, C)` in sequence order: frame by frame, scale by scale, row-major."""
    B, T = per_scale[0].shape[:2]
    return torch.cat([x.reshape(B, T, -1, x.shape[-1]) for x in per_scale], dim=2).reshape(B, -1, per_scale[0].shape[-1])


def unpack_scales(x_BNC: torch.Tensor, num_frames: int, scale_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Inverse of `pack_scales`."""
    B, _, C = x_BNC.shape
    x_BTLC = x_BNC.reshape(B, num_frames, -1, C)
    chunks = x_BTLC.split([h * w for h, w in scale_sizes], dim=2)
    return [chunk.reshape(B, num_frames, h, w, C) for chunk, (h, w) in zip(chunks, scale_sizes)]
