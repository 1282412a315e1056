"""VideoAR's video tokenizer: a causal 3D CNN around the multi-scale bitwise quantizer (docs/method.md §2)."""

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from .causal_cnn import Decoder3D, Encoder3D, causal_streaming
from .pipeline_folder import safetensors_only
from .pipeline_inputs import require
from .quantizer import MultiScaleBitwiseQuantizer
from .scale_schedule import get_scale_sizes, nearest_served_grids, validate_scale_schedule


@dataclass
class VideoARTokenizerEncoderOutput(BaseOutput):
    """latents: the continuous encoder output `F`, `(B, d, T', h, w)`."""

    latents: torch.Tensor


@dataclass
class VideoARTokenizerQuantizerOutput(BaseOutput):
    """bits: per scale, `(B, T', h_k, w_k, d)` bool. features: `F_hat`, `(B, d, T', h, w)`, with a straight-through
    gradient to the latents. commitment_loss: `mean((F - sg(F_hat)) ** 2)`."""

    bits: list[torch.Tensor]
    features: torch.Tensor
    commitment_loss: torch.Tensor


@dataclass
class VideoARTokenizerDecoderOutput(BaseOutput):
    """sample: the decoded video, `(B, 3, 1 + tau (T' - 1), H, W)`."""

    sample: torch.Tensor


@dataclass
class VideoARTokenizerOutput(BaseOutput):
    """A reconstruction and what the encoder and quantizer made of the video on the way (see the outputs above). The
    per-scale bits are `quantize(latents).bits`; they are left out here because every output field is a tensor."""

    sample: torch.Tensor
    latents: torch.Tensor
    features: torch.Tensor
    commitment_loss: torch.Tensor


def _validate_config(config) -> None:
    for field in ("in_channels", "out_channels", "latent_channels", "base_channels", "num_res_blocks"):
        require(config[field] >= 1, field, config[field], "a positive integer")
    decoder_blocks = config.get("decoder_num_res_blocks")
    require(decoder_blocks is None or (isinstance(decoder_blocks, int) and decoder_blocks >= 1),
            "decoder_num_res_blocks", decoder_blocks, "None or a positive integer")  # fmt: skip
    multipliers = list(config.channel_multipliers)
    require(
        len(multipliers) >= 1 and all(m >= 1 for m in multipliers),
        "channel_multipliers", multipliers, "a non-empty list of positive integers",
    )
    tau, f = config.temporal_compression_ratio, config.spatial_compression_ratio
    require(tau in (1, 2, 4), "temporal_compression_ratio", tau, "1, 2 or 4")
    require(f in (4, 8, 16), "spatial_compression_ratio", f, "4, 8 or 16")
    levels_f = 2 ** (len(multipliers) - 1)
    require(f == levels_f, "spatial_compression_ratio", f, f"{levels_f} = 2 ** (len(channel_multipliers) - 1)")
    widths = [config.base_channels * m for m in multipliers]
    require(
        config.norm_num_groups >= 1 and all(w % config.norm_num_groups == 0 for w in widths),
        "norm_num_groups", config.norm_num_groups, f"a positive divisor of every level's width {widths}",
    )
    require(0.0 <= config.dropout < 1.0, "dropout", config.dropout, "in [0, 1)")
    require(
        config.quantizer_upsample_mode in ("nearest", "bilinear", "bicubic"),
        "quantizer_upsample_mode", config.quantizer_upsample_mode, "'nearest', 'bilinear' or 'bicubic'",
    )
    validate_scale_schedule(config.scale_schedule)
    sides = [s * f for s in config.scale_schedule]
    require(config.sample_size in sides, "sample_size", config.sample_size, f"one of {sides} (scale_schedule x {f})")


class VideoARTokenizer(ModelMixin, ConfigMixin):
    r"""
    Causal 3D tokenizer with multi-scale residual bitwise quantization (docs/method.md §2).

    A video `(B, 3, 1 + T, H, W)` in [-1, 1] becomes latents `(B, d, 1 + T / tau, H / f, W / f)`: the first frame is its
    own latent frame, each later group of `tau` frames is one. Each latent frame is quantized on its own into `d` bits
    per position at every scale of the schedule. Encoding and decoding are causal, so both can run chunk by chunk.

    Args:
        in_channels (`int`, defaults to 3): channels of the input video.
        out_channels (`int`, defaults to 3): channels of the decoded video.
        latent_channels (`int`, defaults to 48): bits per token `d`; paper: 48.
        base_channels (`int`, defaults to 128): width of the first CNN level; our choice (LDM / Infinity's VAE).
        channel_multipliers (`tuple[int]`, defaults to `(1, 2, 4, 4, 4)`): width of each level, in units of
            `base_channels`; `len - 1` levels downsample space by 2. Our choice.
        num_res_blocks (`int`, defaults to 2): residual blocks per encoder level (decoder: one more, as in LDM). Our
            choice.
        decoder_num_res_blocks (`int`, *optional*): the decoder's own `num_res_blocks` (it still runs one more per
            level), for a decoder deeper than the encoder; `None` is `num_res_blocks`. Our addition.
        spatial_compression_ratio (`int`, defaults to 16): `f`, 4, 8 or 16, equal to
            `2 ** (len(channel_multipliers) - 1)`; paper: 16. 4 keeps small sharp shapes (squares of 10 px) that an
            8-px latent grid rounds.
        temporal_compression_ratio (`int`, defaults to 4): `tau`, 1, 2 or 4; paper: 4.
        scale_schedule (`tuple[int]`, defaults to `(1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32)`): token-map sides, coarse
            to fine (see `get_scale_sizes`); the paper does not give it. A latent grid of longer side `n` uses the
            prefix up to `n`: 128 px -> 8 latents -> 6 scales.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups; every level's width must be divisible by it.
        dropout (`float`, defaults to 0.0): dropout inside the residual blocks.
        quantizer_upsample_mode (`str`, defaults to `"bilinear"`): how scale codes are upsampled to the latent grid:
            "nearest", "bilinear" or "bicubic"; the paper does not say.
        sample_size (`int`, defaults to 128): default pixel side of a video; paper: 128 on UCF-101.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock3D", "AttentionBlock3D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 48,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 2, 4, 4, 4),
        num_res_blocks: int = 2,
        spatial_compression_ratio: int = 16,
        temporal_compression_ratio: int = 4,
        scale_schedule: Sequence[int] = (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32),
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        quantizer_upsample_mode: str = "bilinear",
        sample_size: int = 128,
        decoder_num_res_blocks: int | None = None,
    ):
        super().__init__()
        _validate_config(self.config)

        network = dict(
            latent_channels=latent_channels,
            base_channels=base_channels,
            channel_multipliers=tuple(channel_multipliers),
            num_res_blocks=num_res_blocks,
            temporal_compression_ratio=temporal_compression_ratio,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
        )
        self.encoder = Encoder3D(in_channels=in_channels, **network)
        network["num_res_blocks"] = decoder_num_res_blocks or num_res_blocks
        self.decoder = Decoder3D(out_channels=out_channels, **network)
        self.quantizer = MultiScaleBitwiseQuantizer(latent_channels, quantizer_upsample_mode)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """diffusers' `from_pretrained`, safetensors only: a folder with just a pickle-format file is an error, never
        a fallback to an unpickler."""
        return super().from_pretrained(*args, **safetensors_only(kwargs))

    def num_latent_frames(self, num_frames: int) -> int:
        """`1 + T` pixel frames -> `1 + T / tau` latent frames; `num_frames` must be `1 + tau * k`."""
        tau = self.config.temporal_compression_ratio
        if num_frames < 1 or (num_frames - 1) % tau != 0:
            below = 1 + tau * max(0, (num_frames - 1) // tau)
            nearest = sorted({below, below + tau} if num_frames > 1 else {1})
            raise ValueError(
                f"`num_frames` must be 1 + {tau} * k (1, {1 + tau}, {1 + 2 * tau}, ...) for temporal compression "
                f"{tau}, got {num_frames}; nearest valid values: {nearest}."
            )
        return 1 + (num_frames - 1) // tau

    def scale_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Token-map sizes `(h_k, w_k)`, coarse to fine, of a video of `height x width` pixels."""
        f = self.config.spatial_compression_ratio
        for name, value in (("height", height), ("width", width)):
            require(value >= f and value % f == 0, name, value, f"a positive multiple of {f} (spatial compression)")
        try:
            return get_scale_sizes(self.config.scale_schedule, height // f, width // f)
        except ValueError as error:
            sides = [s * f for s in self.config.scale_schedule]
            nearest = nearest_served_grids(self.config.scale_schedule, height // f, width // f)
            raise ValueError(
                f"`height` x `width` = {height}x{width} (a {height // f}x{width // f} latent grid) is not served by "
                f"`scale_schedule` {list(self.config.scale_schedule)}: the longer side must be one of {sides} pixels. "
                f"Nearest served sizes: {', '.join(f'{h * f}x{w * f}' for h, w in nearest)}."
            ) from error

    def validate_video_shape(self, num_frames: int, height: int, width: int) -> None:
        self.num_latent_frames(num_frames)
        self.scale_sizes(height, width)

    @apply_forward_hook
    def encode(
        self, video: torch.Tensor, return_dict: bool = True, chunk_size: int | None = None
    ) -> VideoARTokenizerEncoderOutput | tuple[torch.Tensor]:
        """Video `(B, 3, 1 + T, H, W)` in [-1, 1] -> continuous latents `(B, d, 1 + T / tau, H / f, W / f)`.

        `chunk_size` latent frames at a time (the first chunk `1 + tau (c - 1)` pixel frames, later ones `tau c`)
        bounds memory; by causality the result equals one pass.
        """
        self._check_tensor("video", video, self.config.in_channels, "(B, C, 1 + T, H, W)")
        self.validate_video_shape(*video.shape[2:])
        self._check_chunk_size(chunk_size)
        if chunk_size is None:
            latents = self.encoder(video)
        else:
            num_latent_frames = self.num_latent_frames(video.shape[2])
            starts = range(0, num_latent_frames, chunk_size)
            chunks = [video[:, :, self._first_pixel_frame(s) : self._first_pixel_frame(s + chunk_size)] for s in starts]
            with causal_streaming(self.encoder):
                latents = torch.cat([self.encoder(chunk) for chunk in chunks], dim=2)
        return VideoARTokenizerEncoderOutput(latents=latents) if return_dict else (latents,)

    def _first_pixel_frame(self, latent_frame: int) -> int:
        return 0 if latent_frame == 0 else 1 + self.config.temporal_compression_ratio * (latent_frame - 1)

    def quantize(
        self, latents: torch.Tensor, return_dict: bool = True, num_scales: int | None = None
    ) -> VideoARTokenizerQuantizerOutput | tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Multi-scale residual BSQ of every latent frame over the scale schedule. With `num_scales`, `features` is
        `F_hat` of the first `num_scales` scales alone (nested dropout in training, docs/method.md §2); the bits and
        the commitment loss are always the whole pyramid's."""
        self._check_tensor("latents", latents, self.config.latent_channels, "(B, d, T', h, w)")
        scale_sizes = get_scale_sizes(self.config.scale_schedule, *latents.shape[-2:])
        require(num_scales is None or (isinstance(num_scales, int) and 1 <= num_scales <= len(scale_sizes)),
                "num_scales", num_scales, f"None or an integer in [1, {len(scale_sizes)}]")  # fmt: skip
        quantized = self.quantizer.residual_quantize(latents, scale_sizes)
        commitment_loss = torch.mean((latents - quantized.features.detach()) ** 2)
        features = quantized.features
        if num_scales is not None and num_scales < len(scale_sizes):
            features = self.quantizer.bits_to_features(quantized.bits[:num_scales], scale_sizes[-1], latents.dtype)
        # straight-through: the value is exactly F_hat (x - x == 0), the gradient reaches the encoder
        features = features + (latents - latents.detach())
        if not return_dict:
            return quantized.bits, features, commitment_loss
        return VideoARTokenizerQuantizerOutput(bits=quantized.bits, features=features, commitment_loss=commitment_loss)

    @apply_forward_hook
    def decode(
        self, features: torch.Tensor, return_dict: bool = True, chunk_size: int | None = None
    ) -> VideoARTokenizerDecoderOutput | tuple[torch.Tensor]:
        """Features `(B, d, T', h, w)` -> video `(B, 3, 1 + tau (T' - 1), f h, f w)`; `chunk_size` latent frames at a
        time gives the same result as one pass."""
        self._check_tensor("features", features, self.config.latent_channels, "(B, d, T', h, w)")
        self._check_chunk_size(chunk_size)
        if chunk_size is None:
            sample = self.decoder(features)
        else:
            with causal_streaming(self.decoder):
                sample = torch.cat([self.decoder(chunk) for chunk in features.split(chunk_size, dim=2)], dim=2)
        return VideoARTokenizerDecoderOutput(sample=sample) if return_dict else (sample,)

    def decode_bits(
        self, bits: Sequence[torch.Tensor], return_dict: bool = True, chunk_size: int | None = None
    ) -> VideoARTokenizerDecoderOutput | tuple[torch.Tensor]:
        """Per-scale bits `(B, T', h_k, w_k, d)`, coarse to fine, -> video. The finest scale is the latent grid."""
        if len(bits) == 0 or any(b.ndim != 5 or b.shape[-1] != self.config.latent_channels for b in bits):
            raise ValueError(
                f"`bits` must be a non-empty list of (B, T', h_k, w_k, {self.config.latent_channels}) tensors, got "
                f"shapes {[tuple(b.shape) for b in bits]}."
            )
        features = self.quantizer.bits_to_features(bits, tuple(bits[-1].shape[2:4]), dtype=self.dtype)
        return self.decode(features, return_dict=return_dict, chunk_size=chunk_size)

    def forward(
        self, sample: torch.Tensor, return_dict: bool = True, num_scales: int | None = None
    ) -> VideoARTokenizerOutput | tuple:
        """Encode, quantize and decode `sample` `(B, 3, 1 + T, H, W)`; the decoder sees exactly `F_hat`, of the
        first `num_scales` scales if given (see `quantize`)."""
        latents = self.encode(sample).latents
        quantized = self.quantize(latents, num_scales=num_scales)
        reconstruction = self.decode(quantized.features).sample
        if not return_dict:
            return reconstruction, latents, quantized.features, quantized.commitment_loss
        return VideoARTokenizerOutput(
            sample=reconstruction,
            latents=latents,
            features=quantized.features,
            commitment_loss=quantized.commitment_loss,
        )

    @staticmethod
    def _check_tensor(name: str, x: torch.Tensor, channels: int, layout: str) -> None:
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"`{name}` must be a 5D tensor {layout} with {channels} channels, got {tuple(x.shape)}.")

    def _check_chunk_size(self, chunk_size: int | None) -> None:
        if chunk_size is None:
            return
        require(isinstance(chunk_size, int) and chunk_size >= 1, "chunk_size", chunk_size, "a positive integer")
        if torch.is_grad_enabled() and self.is_gradient_checkpointing:
            # the recomputation in backward would read the streaming state of a later chunk
            raise ValueError("`chunk_size` cannot be used with gradient checkpointing while gradients are enabled.")
