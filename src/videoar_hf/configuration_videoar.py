"""Configuration of the VideoAR transformer."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .scale_schedule import validate_scale_schedule


@strict
class VideoARConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoARTransformer`], a LLaMA-style decoder that predicts a video frame by frame and, inside a
    frame, scale by scale (docs/method.md §3). Fields the paper does not fix are marked *(our choice)*.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads: width, depth and heads. Paper sizes are in
            `VIDEOAR_PRESETS` (`L`, `XL`, `4B`, docs/method.md §3).
        intermediate_size: SwiGLU width. Defaults to `4 * hidden_size`, which gives the paper's parameter counts.
        rms_norm_eps, initializer_range, attention_dropout: as in LLaMA.
        latent_bits: bits per token, `d` (docs/method.md §2: 48). Must equal the tokenizer's `latent_channels`.
        scale_schedule: square-grid side lengths, coarse to fine; must equal the tokenizer's. See `get_scale_sizes`.
        text_hidden_size: width of the text encoder's hidden states, projected to `hidden_size` as the prefix.
        rope_theta: RoPE base.
        rope_axes_dim: head dimensions given to the (time, height, width) axes of Multi-scale Temporal RoPE; must be
            even and sum to the head dimension. Default: equal thirds, time takes the remainder *(our choice, §4)*.
        rope_spatial_positions: `"raw"` uses each scale's own grid indices (the paper's figure); `"finest"` rescales
            them onto the finest grid (Infinity's practice). *(our choice, §4)*
        error_correction: train with Cross-Frame Error Correction (docs/method.md §5). Training only.
        flip_rate_min, flip_rate_max, flip_rate_delta: frame t flips bits with `p ~ U(min + delta*t, max + delta*t)`
            (§5: 0, 0.25, 0.01).
        flip_rate_inheritance: the first scale of frame t draws `p ~ U(p_prev_last, max + delta*t)` (§5).
        frame_mask_prob: Random Frame Mask drop probability of each past frame during training *(our choice, §6)*.
        frame_mask_window: number of past latent frames a frame may attend to; `None` is unlimited *(our choice, §6)*.
    """

    model_type = "videoar"

    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    latent_bits: int = 48
    scale_schedule: list[int] | tuple[int, ...] = (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32)
    text_hidden_size: int = 768
    rope_theta: float = 10000.0
    rope_axes_dim: list[int] | tuple[int, ...] | None = None
    rope_spatial_positions: str = "raw"
    error_correction: bool = True
    flip_rate_min: float = 0.0
    flip_rate_max: float = 0.25
    flip_rate_delta: float = 0.01
    flip_rate_inheritance: bool = True
    frame_mask_prob: float = 0.1
    frame_mask_window: int | None = None

    def __post_init__(self, **kwargs):
        self.scale_schedule = list(self.scale_schedule)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.rope_axes_dim is None:
            pairs = self.head_dim // 2
            self.rope_axes_dim = [2 * (pairs - 2 * (pairs // 3)), 2 * (pairs // 3), 2 * (pairs // 3)]
        self.rope_axes_dim = list(self.rope_axes_dim)
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self):
        """Runs on construction (`@strict`): every error names the field and what is allowed."""
        sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "latent_bits",
                 "text_hidden_size")  # fmt: skip
        for field in sizes:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{field}` must be a positive integer, got {value!r}.")
        for field in ("rope_theta", "rms_norm_eps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"`{field}` must be > 0, got {getattr(self, field)!r}.")
        if not 0 <= self.attention_dropout < 1:
            raise ValueError(f"`attention_dropout` must be in [0, 1), got {self.attention_dropout!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if len(self.rope_axes_dim) != 3 or any(d % 2 or d < 0 for d in self.rope_axes_dim):
            raise ValueError(f"`rope_axes_dim` must be three even numbers (time, height, width), got {self.rope_axes_dim}.")
        if sum(self.rope_axes_dim) != self.head_dim:
            raise ValueError(
                f"`rope_axes_dim` {self.rope_axes_dim} must sum to the head dimension {self.head_dim}."
            )
        if self.rope_spatial_positions not in ("raw", "finest"):
            raise ValueError(f"`rope_spatial_positions` must be 'raw' or 'finest', got {self.rope_spatial_positions!r}.")
        validate_scale_schedule(self.scale_schedule)
        if not 0 <= self.flip_rate_min <= self.flip_rate_max <= 1:
            raise ValueError(
                f"Need 0 <= `flip_rate_min` <= `flip_rate_max` <= 1, got {self.flip_rate_min}, {self.flip_rate_max}."
            )
        if not 0 <= self.frame_mask_prob < 1:
            raise ValueError(f"`frame_mask_prob` must be in [0, 1), got {self.frame_mask_prob}.")
        if self.frame_mask_window is not None and self.frame_mask_window < 1:
            raise ValueError(f"`frame_mask_window` must be None or >= 1, got {self.frame_mask_window}.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VideoARConfig":
        """A named size: the paper's `L`, `XL`, `4B` (docs/method.md §3), or `tiny` for tests. Overrides win."""
        if name not in VIDEOAR_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(VIDEOAR_PRESETS)}.")
        return cls(**{**VIDEOAR_PRESETS[name], **overrides})


# docs/method.md §3: L = 926M, XL = 2.0B, 4B; with `intermediate_size = 4 * hidden_size` the counts match.
VIDEOAR_PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, latent_bits=8, text_hidden_size=32),
    "L": dict(hidden_size=1536, num_hidden_layers=24, num_attention_heads=12),
    "XL": dict(hidden_size=2048, num_hidden_layers=32, num_attention_heads=16),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32),
}
