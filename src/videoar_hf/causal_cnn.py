"""The causal 3D CNN of the video tokenizer (docs/method.md §2), laid out like the LDM / Flux VAE.

Every temporal operation is causal: output frame t reads input frames up to t only. Convolutions pad time in front
(replicating the first frame), normalization and attention work frame by frame, and temporal upsampling turns each
frame into a pair. So a video can be coded chunk by chunk (`causal_streaming`) with the same result as in one pass.

Parameter names follow LDM (`down.{i}.block.{j}.conv1`, `mid.attn_1.q`, `up.{i}.upsample`, ...), and a 2D kernel placed
in the temporally last slice of a 3D kernel gives the 2D result on a single frame: a 2D image tokenizer inflates into
this network (docs/method.md §2, "Init").

Shapes: `x_BCTHW` is (batch, channels, frames, height, width).
"""

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class StreamingModule(nn.Module):
    """A module that can carry state from one temporal chunk to the next; `causal_streaming` drives it."""

    def __init__(self):
        super().__init__()
        self.streaming = False

    def reset_stream(self) -> None:
        """Drop whatever the previous chunks left behind; subclasses that carry state override this."""


@contextmanager
def causal_streaming(module: nn.Module) -> Iterator[None]:
    """Within this context, successive calls of `module` continue one video: feed its chunks in order.

    On exit (also on an exception) the carried state is dropped and `module` codes whole videos again.
    """
    streaming_modules = [m for m in module.modules() if isinstance(m, StreamingModule)]
    for m in streaming_modules:
        m.reset_stream()
        m.streaming = True
    try:
        yield
    finally:
        for m in streaming_modules:
            m.streaming = False
            m.reset_stream()


class CausalConv3d(StreamingModule):
    """`nn.Conv3d` that pads time in front only, replicating the first frame, and pads space with zeros.

    `spatial_padding` is `(left, right, top, bottom)`; by default symmetric, half the kernel. While streaming, the
    frames the next chunk's first outputs still need are kept and used instead of the replicated padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        spatial_padding: tuple[int, int, int, int] | None = None,
    ):
        super().__init__()
        kernel_t, kernel_h, kernel_w = _triple(kernel_size)
        self.temporal_stride = _triple(stride)[0]
        self.temporal_padding = kernel_t - 1
        if spatial_padding is None:
            spatial_padding = (kernel_w // 2, kernel_w // 2, kernel_h // 2, kernel_h // 2)
        self.spatial_padding = tuple(spatial_padding)
        self.conv = _Conv3dKernel(in_channels, out_channels, (kernel_t, kernel_h, kernel_w), stride=stride, padding=0)
        self._tail_BCTHW: torch.Tensor | None = None

    def reset_stream(self) -> None:
        self._tail_BCTHW = None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = F.pad(x_BCTHW, self.spatial_padding)
        if x_BCTHW.shape[2] == 1 and not self.streaming:
            return self.conv(x_BCTHW, lone_frame=True)
        if self.streaming and self._tail_BCTHW is not None:
            x_BCTHW = torch.cat([self._tail_BCTHW, x_BCTHW], dim=2)
        else:
            first_frame = x_BCTHW[:, :, :1].expand(-1, -1, self.temporal_padding, -1, -1)
            x_BCTHW = torch.cat([first_frame, x_BCTHW], dim=2)
        out_BCTHW = self.conv(x_BCTHW)
        if self.streaming:
            # the next output's window starts where the next stride step lands: exact for any kernel and stride;
            # a copy, as a view would keep the whole chunk alive
            self._tail_BCTHW = x_BCTHW[:, :, self.temporal_stride * out_BCTHW.shape[2] :].clone()
        return out_BCTHW


class _Conv3dKernel(nn.Conv3d):
    """The conv of `CausalConv3d` (its weights stay `conv.weight`), with two fast paths inside its own `forward`, so
    hooks on it (sequential offload, layerwise casting) see every use of its weights."""

    def forward(self, x_BCTHW: torch.Tensor, lone_frame: bool = False) -> torch.Tensor:
        if lone_frame:
            # a lone frame, replicated over every time tap, is a 2D conv with the taps summed: a third of the work
            weight_OIhw = self.weight.sum(dim=2)
            return F.conv2d(x_BCTHW[:, :, 0], weight_OIhw, self.bias, stride=self.stride[1:])[:, :, None]
        if (x_BCTHW.device.type == "cpu" and x_BCTHW.dtype == torch.float32 and not torch.compiler.is_compiling()
                and torch.backends.mkldnn.is_available()):  # fmt: skip
            # PyTorch sends batch-1 fp32 3D convs with few channels to a reference kernel ~12x slower than oneDNN
            return torch.mkldnn_convolution(
                x_BCTHW.contiguous(), self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x_BCTHW)


class FrameGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` over each frame alone: statistics never mix time steps, which keeps the network causal."""

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_BCTHW.shape
        x_NCHW = x_BCTHW.transpose(1, 2).reshape(B * T, C, H, W)
        return super().forward(x_NCHW).reshape(B, T, C, H, W).transpose(1, 2)


def pointwise_conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    """1x1x1 convolution: it has no temporal extent, so it needs no causal padding."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=1)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_num_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = FrameGroupNorm(norm_num_groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.nin_shortcut = (
            pointwise_conv(in_channels, out_channels) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h_BCTHW = self.conv1(F.silu(self.norm1(x_BCTHW)))
        h_BCTHW = self.conv2(self.dropout(F.silu(self.norm2(h_BCTHW))))
        return self.nin_shortcut(x_BCTHW) + h_BCTHW


class AttentionBlock3D(nn.Module):
    """Single-head self-attention over the positions of each frame; frames never attend to each other."""

    def __init__(self, channels: int, norm_num_groups: int):
        super().__init__()
        self.norm = FrameGroupNorm(norm_num_groups, channels, eps=1e-6)
        self.q = pointwise_conv(channels, channels)
        self.k = pointwise_conv(channels, channels)
        self.v = pointwise_conv(channels, channels)
        self.proj_out = pointwise_conv(channels, channels)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_BCTHW.shape
        h_BCTHW = self.norm(x_BCTHW)

        def frames_as_batch(y_BCTHW: torch.Tensor) -> torch.Tensor:
            return y_BCTHW.permute(0, 2, 3, 4, 1).reshape(B * T, 1, H * W, C)

        q, k, v = (frames_as_batch(proj(h_BCTHW)) for proj in (self.q, self.k, self.v))
        h_N1LC = F.scaled_dot_product_attention(q, k, v)
        h_BCTHW = h_N1LC.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)
        return x_BCTHW + self.proj_out(h_BCTHW)


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, norm_num_groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, norm_num_groups, dropout)
        self.attn_1 = AttentionBlock3D(channels, norm_num_groups)
        self.block_2 = ResnetBlock3D(channels, channels, norm_num_groups, dropout)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_BCTHW)))


class Downsample3D(nn.Module):
    """Spatial /2 with LDM's asymmetric padding; time /2 too when `temporal` (frames 1 + 2k -> 1 + k)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        stride = (2 if temporal else 1, 2, 2)
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=stride, spatial_padding=(0, 1, 0, 1))

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCTHW)


class Upsample3D(StreamingModule):
    """Time x2 when `temporal` (frames 1 + k -> 1 + 2k), then space x2 (nearest), then a causal 3x3x3 conv.

    In time, each frame `x` becomes the pair `(earlier_frame @ x, x)`: a learned channel mix makes the earlier frame
    of the pair, so the two can differ from the first layer on. `earlier_frame` starts as the identity and takes no
    random numbers, so a fresh or inflated upsampler repeats frames (an inflated 2D upsampler stays exact) and a
    tokenizer trained on images alone is unchanged by it. The video's first frame stands alone (it is its own latent
    frame), so its earlier copy is dropped; while streaming, only the first chunk holds it.
    """

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.earlier_frame = nn.Parameter(torch.eye(channels)) if temporal else None
        self.conv = CausalConv3d(channels, channels, kernel_size=3)
        self._first_chunk_pending = True

    def reset_stream(self) -> None:
        self._first_chunk_pending = True

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            earlier_BCTHW = torch.einsum("oc,bcthw->bothw", self.earlier_frame.to(x_BCTHW.dtype), x_BCTHW)
            x_BCTHW = torch.stack([earlier_BCTHW, x_BCTHW], dim=3).flatten(2, 3)  # e0, x0, e1, x1, ...
            if self._first_chunk_pending:
                x_BCTHW = x_BCTHW[:, :, 1:]
            if self.streaming:
                self._first_chunk_pending = False
        x_BCTHW = F.interpolate(x_BCTHW, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x_BCTHW)


class _CheckpointedNetwork(nn.Module):
    """Runs blocks through diffusers' `_gradient_checkpointing_func`, which `ModelMixin` sets with the flag."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, block: nn.Module, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, x_BCTHW)
        return block(x_BCTHW)


class Encoder3D(_CheckpointedNetwork):
    """Video `(B, in_channels, 1 + T, H, W)` -> latents `(B, latent_channels, 1 + T / tau, H / f, W / f)`.

    `f = 2 ** (len(channel_multipliers) - 1)`; time is halved by the last `log2(tau)` downsamplers.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_compression_ratio: int,
        norm_num_groups: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_levels = len(channel_multipliers)
        first_temporal_level = num_levels - 1 - int(math.log2(temporal_compression_ratio))
        self.conv_in = CausalConv3d(in_channels, base_channels, kernel_size=3)

        self.down = nn.ModuleList()
        block_in = base_channels
        for i, multiplier in enumerate(channel_multipliers):
            block_out = base_channels * multiplier
            level = nn.Module()  # plain container, as in LDM, for the keys `down.{i}.block.{j}`, `down.{i}.downsample`
            level.block = nn.ModuleList(
                ResnetBlock3D(block_in if j == 0 else block_out, block_out, norm_num_groups, dropout)
                for j in range(num_res_blocks)
            )
            is_last = i == num_levels - 1
            level.downsample = nn.Identity() if is_last else Downsample3D(block_out, temporal=i >= first_temporal_level)
            self.down.append(level)
            block_in = block_out

        self.mid = MidBlock3D(block_in, norm_num_groups, dropout)
        self.norm_out = FrameGroupNorm(norm_num_groups, block_in, eps=1e-6)
        self.conv_out = CausalConv3d(block_in, latent_channels, kernel_size=3)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(video_BCTHW)
        for level in self.down:
            for block in level.block:
                x_BCTHW = self._run(block, x_BCTHW)
            x_BCTHW = level.downsample(x_BCTHW)
        x_BCTHW = self._run(self.mid, x_BCTHW)
        return self.conv_out(F.silu(self.norm_out(x_BCTHW)))


class Decoder3D(_CheckpointedNetwork):
    """Latents `(B, latent_channels, T', h, w)` -> video `(B, out_channels, 1 + tau (T' - 1), f h, f w)`.

    Mirrors `Encoder3D`: `up[i]` undoes `down[i]`, `up[-1]` runs first, and the first `log2(tau)` upsamplers to run
    double time.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_compression_ratio: int,
        norm_num_groups: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_levels = len(channel_multipliers)
        first_temporal_level = num_levels - int(math.log2(temporal_compression_ratio))
        block_in = base_channels * channel_multipliers[-1]
        self.conv_in = CausalConv3d(latent_channels, block_in, kernel_size=3)
        self.mid = MidBlock3D(block_in, norm_num_groups, dropout)

        self.up = nn.ModuleList()
        for i in reversed(range(num_levels)):
            block_out = base_channels * channel_multipliers[i]
            level = nn.Module()  # plain container, as in LDM, for the keys `up.{i}.block.{j}`, `up.{i}.upsample`
            level.block = nn.ModuleList(
                ResnetBlock3D(block_in if j == 0 else block_out, block_out, norm_num_groups, dropout)
                for j in range(num_res_blocks + 1)
            )
            level.upsample = nn.Identity() if i == 0 else Upsample3D(block_out, temporal=i >= first_temporal_level)
            self.up.insert(0, level)
            block_in = block_out

        self.norm_out = FrameGroupNorm(norm_num_groups, block_in, eps=1e-6)
        self.conv_out = CausalConv3d(block_in, out_channels, kernel_size=3)

    def forward(self, latents_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.conv_in(latents_BCTHW)
        x_BCTHW = self._run(self.mid, x_BCTHW)
        for level in reversed(self.up):
            for block in level.block:
                x_BCTHW = self._run(block, x_BCTHW)
            x_BCTHW = level.upsample(x_BCTHW)
        return self.conv_out(F.silu(self.norm_out(x_BCTHW)))
