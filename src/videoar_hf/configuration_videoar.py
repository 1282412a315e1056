"""Configuration of the VideoAR transformer."""

import math

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
        text_hidden_size: width of the text encoder's hidden states, projected to `hidden_size` as the prefix. Unused
            by a class-conditional model (`num_classes`), which builds no text projection.
        text_attention: how the text prefix attends to itself. `"causal"`: text token i sees text tokens <= i, as the
            causal layers of the paper's Figure 2 draw it; `"bidirectional"`: every text token sees the whole prompt.
            Video tokens see the whole prompt either way. A config saved before this field existed loads as
            `"bidirectional"`, what it was trained with. *(§3)*
        num_classes: `None` for a text-to-video model; an integer makes a class-conditional model (the paper's UCF-101
            model, docs/method.md §8): one learned class token is the prefix, class ids `0..num_classes - 1`, and id
            `num_classes` is the null class of classifier-free guidance. `id2label` / `label2id` name the classes as
            for transformers' classifiers (`LABEL_i` when not given) and must hold `num_classes` entries.
        max_latent_frames: the longest video, in latent frames, the model saw in training; the pipeline re-encodes the
            video's tail past it (docs/method.md §8). `None`: no limit known. *(our choice, §8)*
        context_frames: latent frames a long generation re-encodes from the end of one window to start the next (the
            pipeline's `context_frames` when a call does not give it), and the given frames of training clips that
            continue a video. `None`: half of `max_latent_frames`. Must be below `max_latent_frames`. *(our choice,
            §8)*
        guidance_frames: latent frames, from the start of a video and from each later prompt, sampled with
            classifier-free guidance; later ones are sampled without it (scale 1) and without the unconditional
            pass. The pipeline's `guidance_frames` when a call does not give it. `None`: every frame is guided, as in
            the paper. Later frames continue the video, and guiding them can push them off it (on Shapes, it rounds
            squares). *(our choice, §8)*
        history_guidance_scale: history guidance (not in the paper, docs/method.md §8): the pipeline's
            `history_guidance_scale` when a call does not give it. Each latent frame is also predicted from the last
            `history_frames` latent frames only, and the logits move away from that prediction by this factor: a
            number, or one per scale (coarse to fine). `1.0`: off, with no extra pass. *(our choice, §8)*
        history_frames: past latent frames the short-history branch of history guidance sees. *(our choice, §8)*
        history_guidance_start: the first latent frame sampled with history guidance; a window of frames before it
            skips the branch. `max_latent_frames` guides only the frames past the trained length, which are sampled
            after frame re-encoding. *(our choice, §8)*
        top_p: the pipeline's per-bit `top_p` when a call does not give it: a bit whose likelier value has at least
            this probability takes that value, and the others are sampled. `1.0`: every bit is sampled. *(our
            choice)*
        rope_theta: RoPE base.
        rope_axes_dim: head dimensions given to the (time, height, width) axes of Multi-scale Temporal RoPE; must be
            even and sum to the head dimension. Default: equal thirds, time takes the remainder *(our choice, §4)*.
        rope_spatial_positions: `"raw"` uses each scale's own grid indices (the paper's figure); `"finest"` rescales
            them onto the finest grid and rounds to whole cells, `round(i * H / h)` with ties to even (Infinity's
            `rope2d_normalized_by_hw=2`); `"centre"` puts each coarse cell at its centre in finest-grid coordinates,
            `(i + 0.5) * H / h - 0.5` (ERNIE 5.0's reading). The paper does not say which; its figure draws `"raw"`.
            *(our choice, §4)*
        error_correction: train with Cross-Frame Error Correction (docs/method.md §5). Training only.
        flip_rate_min, flip_rate_max, flip_rate_delta: frame t flips bits with `p ~ U(min + delta*t, max + delta*t)`
            (§5: 0, 0.25, 0.01).
        flip_rate_inheritance: the first scale of frame t draws `p ~ U(p_prev_last, max + delta*t)` (§5).
        frame_mask_prob: Random Frame Mask drop probability of each past frame during training *(our choice, §6)*.
        frame_mask_window: number of past latent frames a frame may attend to; `None` is unlimited *(our choice, §6)*.
        loss_scale_weighting: how the bitwise cross-entropy weighs the scales. `"uniform"`: the mean over every token
            and bit, so the finest scale dominates (49 % of the loss with the 8x8 schedule 1, 2, 3, 4, 6, 8);
            `"infinity"`: Infinity's `reweight_loss_by_scale`, a token of scale k weighs `sqrt(H_K W_K / (h_k w_k))`,
            the weights normalised to sum to one per sample like the mean's (the finest scale 33 %, the 1x1 one 4.2 %
            instead of 0.8 %). The paper does not say; it follows Infinity's training elsewhere (§5). A config saved
            before this field existed loads as `"uniform"`, what it was trained with. *(our choice, §3)*
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
    text_attention: str = "causal"
    num_classes: int | None = None
    max_latent_frames: int | None = None
    context_frames: int | None = None
    guidance_frames: int | None = None
    history_guidance_scale: float | list[float] = 1.0
    history_frames: int = 1
    history_guidance_start: int = 0
    top_p: float = 1.0
    error_correction: bool = True
    flip_rate_min: float = 0.0
    flip_rate_max: float = 0.25
    flip_rate_delta: float = 0.01
    flip_rate_inheritance: bool = True
    frame_mask_prob: float = 0.1
    frame_mask_window: int | None = None
    loss_scale_weighting: str = "infinity"

    def __post_init__(self, **kwargs):
        self.scale_schedule = list(self.scale_schedule)
        if self.num_classes is not None and self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_classes)}
        if self.num_classes is not None and self.label2id is None:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
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
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"`{field}` must be one of {allowed}, got {getattr(self, field)!r}.")
        validate_scale_schedule(self.scale_schedule)
        if not 0 <= self.flip_rate_min <= self.flip_rate_max <= 1:
            raise ValueError(
                f"Need 0 <= `flip_rate_min` <= `flip_rate_max` <= 1, got {self.flip_rate_min}, {self.flip_rate_max}."
            )
        if not 0 <= self.frame_mask_prob < 1:
            raise ValueError(f"`frame_mask_prob` must be in [0, 1), got {self.frame_mask_prob}.")
        if self.frame_mask_window is not None and self.frame_mask_window < 1:
            raise ValueError(f"`frame_mask_window` must be None or >= 1, got {self.frame_mask_window}.")
        for field in ("num_classes", "max_latent_frames", "context_frames", "guidance_frames"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{field}` must be None or a positive integer, got {value!r}.")
        scales = self.history_guidance_scale if isinstance(self.history_guidance_scale, list) else [self.history_guidance_scale]
        if not scales or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scales):
            raise ValueError(f"`history_guidance_scale` must be a finite number or a list of them, one per scale, got "
                             f"{self.history_guidance_scale!r}.")  # fmt: skip
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be a number in (0, 1], got {self.top_p!r}.")
        for field in ("history_frames", "history_guidance_start"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`{field}` must be an integer >= 0, got {value!r}.")
        if None not in (self.context_frames, self.max_latent_frames) and self.context_frames >= self.max_latent_frames:
            raise ValueError(
                f"`context_frames` ({self.context_frames}) must be below `max_latent_frames` ({self.max_latent_frames}): "
                "a window must have frames left to sample after its context."
            )
        if self.num_classes is not None and sorted(self.id2label) != list(range(self.num_classes)):
            raise ValueError(
                f"`id2label` must name the classes 0..{self.num_classes - 1} of `num_classes={self.num_classes}`, got "
                f"ids {sorted(self.id2label)}."
            )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "VideoARConfig":
        """transformers' `from_dict`; a saved config that predates a field whose default has since changed gets the
        value it was trained with (`SAVED_BEFORE_THE_FIELD`), so an older model behaves as it did."""
        config_dict = dict(config_dict)
        for field, value in SAVED_BEFORE_THE_FIELD.items():
            if field not in config_dict and field not in kwargs:
                config_dict[field] = value
        return super().from_dict(config_dict, **kwargs)

    @property
    def reencode_context_frames(self) -> int:
        """Latent frames a long generation re-encodes from one window's end to start the next, by default:
        `context_frames`, or half the trained length (docs/method.md §8). Training on clips that continue a video
        gives them as context alike."""
        return self.context_frames or max(1, (self.max_latent_frames or 2) // 2)

    @property
    def is_class_conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def null_class_id(self) -> int | None:
        """The class id of classifier-free guidance's unconditional branch (`num_classes`); `None` for a text model."""
        return self.num_classes

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VideoARConfig":
        """A named size: the paper's `L`, `XL`, `4B` (docs/method.md §3), or `tiny` for tests. Overrides win."""
        if name not in VIDEOAR_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(VIDEOAR_PRESETS)}.")
        return cls(**{**VIDEOAR_PRESETS[name], **overrides})


CHOICES = {
    "rope_spatial_positions": ("raw", "finest", "centre"),
    "text_attention": ("causal", "bidirectional"),
    "loss_scale_weighting": ("infinity", "uniform"),
}

# fields that change how the model trains (and, for the window, the context and guidance, how it samples), not its
# weights: a later stage may give a pretrained model new values (docs/method.md §7, stage III)
TRAINING_FIELDS = ("error_correction", "flip_rate_min", "flip_rate_max", "flip_rate_delta", "flip_rate_inheritance",
                   "frame_mask_prob", "frame_mask_window", "loss_scale_weighting", "context_frames",
                   "guidance_frames", "history_guidance_scale", "history_frames",
                   "history_guidance_start", "top_p")  # fmt: skip

# fields whose default differs from what configs saved before the field existed were trained with
SAVED_BEFORE_THE_FIELD = {"text_attention": "bidirectional", "loss_scale_weighting": "uniform"}

# docs/method.md §3: L = 926M, XL = 2.0B, 4B; with `intermediate_size = 4 * hidden_size` the counts match.
VIDEOAR_PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, latent_bits=8, text_hidden_size=32),
    "L": dict(hidden_size=1536, num_hidden_layers=24, num_attention_heads=12),
    "XL": dict(hidden_size=2048, num_hidden_layers=32, num_attention_heads=16),
    # the text-to-video model: 672x384 at f = 16 is a 24x42 latent grid, so its schedule ends at 42 (7:4 template)
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
               scale_schedule=(1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32, 42)),
}
