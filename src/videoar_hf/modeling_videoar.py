"""The VideoAR transformer: causal next-frame and next-scale prediction of bitwise tokens (docs/method.md §3)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.output_capturing import capture_outputs

from .attention_mask import (
    TEXT_BLOCK,
    BlockCausalRule,
    BlockMaskCache,
    FrameBands,
    frame_window_keep,
    to_additive_mask,
)
from .cache import VideoARCache
from .configuration_videoar import VideoARConfig
from .diffusers_memory import DiffusersMemoryMixin
from .pipeline_folder import safetensors_only
from .quantizer import pack_scales
from .rope import MultiScaleTemporalRoPE, apply_rotary_pos_emb, prefix_position_ids, video_position_ids
from .scale_schedule import TokenLayout, get_scale_sizes, validate_scale_schedule

# a label that leaves its token out of the loss (transformers' convention)
IGNORE_INDEX = -100


def scale_loss_weights(layout: TokenLayout, weighting: str) -> torch.Tensor:
    """`(N,)` weight of each video token in the loss, summing to 1 (`config.loss_scale_weighting`).

    `"uniform"`: `1 / N`, the plain mean. `"infinity"`: Infinity's `reweight_loss_by_scale`, a token of a scale of
    `h_k x w_k` cells weighs `sqrt(H_K W_K / (h_k w_k))` (the finest scale's area over its own), then all are divided
    by their sum. Every frame has the same scales, so each frame carries the same share."""
    finest = layout.scale_sizes[-1][0] * layout.scale_sizes[-1][1]
    if weighting == "uniform":
        per_scale = [1.0] * layout.num_scales
    elif weighting == "infinity":
        per_scale = [(finest / (h * w)) ** 0.5 for h, w in layout.scale_sizes]
    else:
        raise ValueError(f"Unknown `loss_scale_weighting` {weighting!r}; use 'uniform' or 'infinity'.")
    frame_weights = torch.cat([torch.full((h * w,), weight, dtype=torch.float64)
                               for weight, (h, w) in zip(per_scale, layout.scale_sizes)])  # fmt: skip
    weights_N = frame_weights.repeat(layout.num_frames)
    return (weights_N / weights_N.sum()).float()


@dataclass
class VideoARTransformerOutput(ModelOutput):
    """
    loss: bitwise binary cross-entropy, when `labels` are given: the mean over the bits of each token, over the tokens
        weighted by scale as `config.loss_scale_weighting` says (`scale_loss_weights`), and the mean over samples.
    logits: `(B, N, d)` one logit per bit of every video token of this pass, in sequence order (frame, scale, row,
        column); in a cached pass, the `h_k * w_k` tokens of its block.
    last_hidden_state: `(B, L + N, hidden_size)` the final-norm states of this pass, prefix included (a cached pass
        holds the prefix only on its first call).
    cache: the `VideoARCache` a cached pass ran with, updated; `None` in a teacher-forced pass.
    hidden_states, attentions: per layer, with `output_hidden_states` / `output_attentions` (eager attention).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    cache: VideoARCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VideoARRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_fp32.to(x.dtype)


class VideoARMLP(nn.Module):
    """SwiGLU, as in LLaMA."""

    def __init__(self, config: VideoARConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    return torch.matmul(attn_weights, value).transpose(1, 2).contiguous(), attn_weights


class VideoARAttention(nn.Module):
    is_causal = False  # the block-causal mask is always passed explicitly

    def __init__(self, config: VideoARConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x_BNC, position_embeddings, attention_mask, cache: VideoARCache | None = None):
        B, N, _ = x_BNC.shape
        q, k, v = (proj(x_BNC).view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for proj in
                   (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        kwargs = {"dropout": self.config.attention_dropout if self.training else 0.0, "scaling": self.scaling}
        if isinstance(attention_mask, FrameBands):  # SDPA: each query frame against the keys it may see
            out_BNHd = attention_mask.attend(lambda *qkvm: attention_interface(self, *qkvm, **kwargs)[0], q, k, v)
            return self.o_proj(out_BNHd.reshape(B, N, -1)), None
        out_BNHd, attn_weights = attention_interface(self, q, k, v, attention_mask, **kwargs)
        return self.o_proj(out_BNHd.reshape(B, N, -1)), attn_weights


class VideoARDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: VideoARConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = VideoARRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = VideoARAttention(config, layer_idx)
        self.post_attention_layernorm = VideoARRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = VideoARMLP(config)

    def forward(self, x_BNC, position_embeddings, attention_mask, cache=None):
        attn_out, _ = self.self_attn(self.input_layernorm(x_BNC), position_embeddings, attention_mask, cache)
        x_BNC = x_BNC + attn_out
        return x_BNC + self.mlp(self.post_attention_layernorm(x_BNC))


class VideoARPreTrainedModel(DiffusersMemoryMixin, PreTrainedModel):
    config: VideoARConfig
    config_class = VideoARConfig
    base_model_prefix = "videoar"
    main_input_name = "scale_inputs"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VideoARDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True  # a BlockMask of the block-causal rule; forward only on CPU (torch has no backward)
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": VideoARDecoderLayer, "attentions": VideoARAttention}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' `from_pretrained`, safetensors only: a folder with just a pickle-format file is an error, never
        a fallback to an unpickler."""
        return super().from_pretrained(*args, **safetensors_only(kwargs))

    def add_adapter(self, adapter_config, adapter_name: str | None = None) -> None:
        """A fresh PEFT adapter (e.g. a `LoraConfig`) on this model, made the active one, as transformers'
        `add_adapter` does; that one asks for peft >= 0.22, which is not released yet, while this needs only peft's
        `inject_adapter_in_model`."""
        from peft import PeftConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        adapter_name = adapter_name or "default"
        if not isinstance(adapter_config, PeftConfig):
            raise ValueError(f"`adapter_config` must be a peft `PeftConfig`, got {type(adapter_config).__name__}.")
        if adapter_name in getattr(self, "peft_config", {}):
            raise ValueError(f"An adapter named {adapter_name!r} already exists; pick another `adapter_name`.")
        inject_adapter_in_model(adapter_config, self, adapter_name)
        self._hf_peft_config_loaded = True
        for module in self.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter(adapter_name)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VideoARTransformer):
            init.normal_(module.start_token, mean=0.0, std=self.config.initializer_range)


class VideoARTransformer(VideoARPreTrainedModel):
    """Decoder over `[prefix][frame 0: scales 1..K][frame 1: scales 1..K]...`.

    The prefix is the prompt's text encoder states (a text-to-video model), or one learned class token when the config
    has `num_classes` (a class-conditional model: `class_labels` in place of `text_hidden_states`; class id
    `num_classes` is the null class of classifier-free guidance; no text projection is built).

    `forward` runs in one of two modes, both through the module's `__call__` (so hooks, offloading and
    `torch.compile` see every pass):
    - teacher-forced over a whole clip (training), without `cache`;
    - one (frame, scale) block with a KV cache (sampling): pass `cache=init_cache(h, w)` on the first call and the
      same cache after; it knows which block comes next.
    A block's input is its next-scale feature map (`ResidualQuantization.scale_inputs`) embedded by a linear layer
    plus a learned scale embedding; frame 0's first block is a learned start token (docs/method.md §3).

    Attention (`attn_implementation`): `"eager"` takes the dense block-causal mask, built once per pass in the
    compute dtype and shared by every layer: `(L + N)^2` elements per sample, 1 GB in bf16 at 33x384x672 (22,718
    tokens). `"sdpa"` (default) takes the same rule split by query frame (`FrameBands`): each frame's queries meet
    only the keys they may see, so no later frame and no frame outside the window is computed and then masked out
    (1.7x a training step on stage III's clips, benchmarks/frame_bands.py). `"flex_attention"` takes a `BlockMask`
    of the same rule: kilobytes, and the tiles no query may see (about half) are skipped. It is built once per token
    layout and kept (`block_mask_cache`), except under a Random Frame Mask, whose table is new every step. torch's
    flex attention has no backward pass on CPU: a pass that needs gradients there raises; train on CPU with
    `"sdpa"`. On CPU flex also compiles its kernel for each new shape (seconds), and a cached sampling step, whose
    queries see every cached key, has no tile to skip: it samples no faster than SDPA (benchmarks/attention.py), so
    SDPA stays the default.
    """

    def __init__(self, config: VideoARConfig):
        super().__init__(config)
        if config.is_class_conditional:
            self.class_embed = nn.Embedding(config.num_classes + 1, config.hidden_size)  # last row: the null class
        else:
            self.text_norm = VideoARRMSNorm(config.text_hidden_size, config.rms_norm_eps)
            self.text_proj = nn.Linear(config.text_hidden_size, config.hidden_size)
        self.input_proj = nn.Linear(config.latent_bits, config.hidden_size)
        self.start_token = nn.Parameter(torch.zeros(config.hidden_size))
        self.scale_embed = nn.Embedding(len(config.scale_schedule), config.hidden_size)
        self.rotary_emb = MultiScaleTemporalRoPE(config.rope_axes_dim, config.rope_theta)
        self.layers = nn.ModuleList([VideoARDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = VideoARRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.bit_head = nn.Linear(config.hidden_size, config.latent_bits)
        self.block_mask_cache = BlockMaskCache()  # flex attention's BlockMasks, per token layout
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The projection of the bit features into the model width (the inputs are features, not token ids)."""
        return self.input_proj

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.input_proj = value

    def scale_sizes(self, latent_height: int, latent_width: int) -> list[tuple[int, int]]:
        return get_scale_sizes(self.config.scale_schedule, latent_height, latent_width)

    def extend_scale_schedule(self, scale_schedule: list[int]) -> None:
        """Grow the model, in place, to a schedule that adds finer scales after its own (e.g. `[1, 2, 4, 8]` to
        `[1, 2, 4, 8, 16]`), for a tokenizer with a finer latent grid. The scale embedding is the only weight tied to
        the number of scales: its old rows stay and each new one starts as a copy of the finest, so the new scale is
        first read as more of the finest one. Every other weight is shared across scales and kept."""
        old = list(self.config.scale_schedule)
        new = list(scale_schedule)
        validate_scale_schedule(new)
        if len(new) <= len(old) or new[: len(old)] != old:
            raise ValueError(f"`scale_schedule` must extend the model's {old} with finer scales, got {new}.")
        weight = self.scale_embed.weight.detach()
        grown = torch.cat([weight, weight[-1:].expand(len(new) - len(old), -1)])
        self.scale_embed = nn.Embedding.from_pretrained(grown, freeze=not self.scale_embed.weight.requires_grad)
        self.config.scale_schedule = new

    def init_cache(self, latent_height: int, latent_width: int, sample_windows: torch.Tensor | None = None) -> VideoARCache:
        """An empty KV cache for sampling a video on a `latent_height x latent_width` grid. `sample_windows` `(B,)`:
        the past latent frames each sample may attend to, inside `config.frame_mask_window` (the short-history branch
        of history guidance); every frame of the window by default."""
        return VideoARCache(self.config.num_hidden_layers, self.scale_sizes(latent_height, latent_width), sample_windows)

    @capture_outputs
    def forward(
        self,
        scale_inputs: torch.Tensor | list[torch.Tensor] | None = None,
        text_hidden_states: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | list[torch.Tensor] | None = None,
        frame_keep: torch.Tensor | None = None,
        latent_size: tuple[int, int] | None = None,
        cache: VideoARCache | None = None,
        class_labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VideoARTransformerOutput:
        """Teacher-forced over a whole clip, or one cached block.

        Args:
            scale_inputs: teacher-forced: per scale `(B, T, h_k, w_k, d)` input features as
                `ResidualQuantization.scale_inputs`, or all of them packed `(B, N, d)` in sequence order
                (`pack_scales`). Cached: the block's input `(B, h_k, w_k, d)` or `(B, h_k * w_k, d)`; `None` for the
                first block, which is the start token.
            text_hidden_states: `(B, L, text_hidden_size)` text encoder states of a text-to-video model (a cached
                pass needs them on its first call only).
            text_attention_mask: `(B, L)`, 1 on real tokens and 0 on padding, on either side: text positions count
                the real tokens, so left and right padding give the same logits.
            labels: target bits, per scale `(B, T, h_k, w_k, d)` or packed `(B, N, d)`; gives `loss`, weighted over
                the scales by `config.loss_scale_weighting`. A token whose bits are `IGNORE_INDEX` (-100, transformers'
                convention) is left out, e.g. the given frames of a continuation.
            frame_keep: `(B, T, T)` frames each frame may attend to. By default: the Random Frame Mask in training
                (docs/method.md §6), the `frame_mask_window` otherwise.
            latent_size: `(h, w)` latent grid of packed inputs; needed for a non-square grid (a square one is inferred
                as the largest schedule side whose tokens per frame divide `N`).
            cache: a `VideoARCache` (`init_cache(h, w)` makes an empty one): run its next (frame, scale) block and
                append that block to it.
            class_labels: `(B,)` class ids of a class-conditional model (`config.num_classes`), in place of
                `text_hidden_states`; `num_classes` is the null class (classifier-free guidance). A cached pass needs
                them on its first call only.
        """
        if cache is not None and not isinstance(cache, VideoARCache):
            raise ValueError(f"`cache` must be a `VideoARCache` (`init_cache`), got {type(cache).__name__}.")
        self._check_conditioning(text_hidden_states, class_labels)
        if cache is not None:
            return self._forward_cached_block(
                cache, scale_inputs, text_hidden_states, text_attention_mask, class_labels
            )
        return self._forward_teacher_forced(
            scale_inputs, text_hidden_states, text_attention_mask, class_labels, labels, frame_keep, latent_size
        )

    def _forward_teacher_forced(self, scale_inputs, text_hidden_states, text_attention_mask, class_labels, labels,
                                frame_keep, latent_size) -> VideoARTransformerOutput:  # fmt: skip
        prefix_BLC, prefix_valid_BL = self._embed_prefix(text_hidden_states, text_attention_mask, class_labels)
        inputs_BNd, layout = self._pack_inputs(scale_inputs, latent_size)
        B, T = inputs_BNd.shape[0], layout.num_frames
        random_frame_mask = frame_keep is None and self.training and self.config.frame_mask_prob > 0
        if random_frame_mask:
            from .random_frame_mask import random_frame_keep  # training-only module

            frame_keep = random_frame_keep(
                B, T, self.config.frame_mask_prob, self.config.frame_mask_window, device=self.device
            )
        elif frame_keep is None:
            frame_keep = frame_window_keep(B, T, self.config.frame_mask_window, device=self.device)

        coords_N4 = layout.token_coords().to(self.device)
        video_BNC = self._embed_video(inputs_BNd, coords_N4)
        hidden_BNC, blocks_N, frames_N, position_ids_BN3, valid_BN = self._join(
            prefix_BLC, prefix_valid_BL, prefix_valid_BL.sum(-1), video_BNC, coords_N4, layout
        )
        rule = BlockCausalRule(blocks_N, frames_N, blocks_N, frames_N, valid_BN, frame_keep, self._causal_text)
        hidden_BNC = self._run_layers(hidden_BNC, position_ids_BN3, rule, reusable_mask=not random_frame_mask)
        hidden_BNC = self.norm(hidden_BNC)
        logits_BNd = self.bit_head(hidden_BNC[:, prefix_BLC.shape[1] :])
        loss = None if labels is None else self._bitwise_loss(logits_BNd, labels, layout)
        return VideoARTransformerOutput(loss=loss, logits=logits_BNd, last_hidden_state=hidden_BNC)

    def _forward_cached_block(self, cache: VideoARCache, scale_input, text_hidden_states, text_attention_mask,
                              class_labels):  # fmt: skip
        frame, scale = cache.next_block
        num_frames = self._prefill_frames(cache, scale_input)
        blocks = (range(frame, frame + num_frames), range(len(cache.scale_sizes))) if num_frames else (
            range(frame, frame + 1), range(scale, scale + 1))  # fmt: skip
        layout = TokenLayout(frame + max(num_frames, 1), tuple(cache.scale_sizes))
        coords_N4 = layout.token_coords(*blocks).to(self.device)
        n = coords_N4.shape[0]
        if cache.is_empty:  # the prefix rides along with the first block
            prefix_BLC, prefix_valid_BL = self._embed_prefix(text_hidden_states, text_attention_mask, class_labels)
            prefix_lengths_B = prefix_valid_BL.sum(-1)
            if not num_frames:
                scale_input = torch.zeros(len(prefix_BLC), n, self.config.latent_bits, device=self.device)  # start token
        else:
            if scale_input is None:
                raise ValueError(f"The cached pass for frame {frame}, scale {scale} needs its `scale_inputs`.")
            prefix_BLC, prefix_valid_BL, prefix_lengths_B = None, None, cache.text_lengths
        B = prefix_lengths_B.shape[0]
        if scale_input.shape[0] != B or scale_input[0].numel() != n * self.config.latent_bits:
            h, w = cache.scale_sizes[scale]
            raise ValueError(
                f"`scale_inputs` for frame {frame}, scale {scale} must be ({B}, {h}, {w}, {self.config.latent_bits}) "
                f"or ({B}, {n}, {self.config.latent_bits}), got {tuple(scale_input.shape)}."
            )
        video_BNC = self._embed_video(scale_input.reshape(B, n, -1), coords_N4)
        hidden_BNC, blocks_N, frames_N, position_ids_BN3, valid_BN = self._join(
            prefix_BLC, prefix_valid_BL, prefix_lengths_B, video_BNC, coords_N4, layout
        )

        window = self.config.frame_mask_window
        if window is not None and scale == 0:
            cache.drop_frames_before(frame - window)  # out of every later token's sight: memory stays flat
        cache.append_tokens(blocks_N, frames_N, valid_BN, num_blocks=len(blocks[0]) * len(blocks[1]))
        frame_keep = frame_window_keep(B, frame + len(blocks[0]), window, self.device, cache.sample_windows)
        rule = BlockCausalRule(
            blocks_N, frames_N, cache.token_blocks, cache.token_frames, cache.token_valid, frame_keep, self._causal_text
        )
        hidden_BNC = self.norm(self._run_layers(hidden_BNC, position_ids_BN3, rule, cache))
        return VideoARTransformerOutput(logits=self.bit_head(hidden_BNC[:, -n:]), last_hidden_state=hidden_BNC, cache=cache)

    def _prefill_frames(self, cache: VideoARCache, scale_input) -> int:
        """How many whole frames a cached pass runs at once: 0 for one block, or F when `scale_input` packs the inputs
        of F whole frames `(B, F * tokens per frame, d)` from a frame's start (known frames: conditioning or
        re-encoded ones, whose blocks need no sampling in between)."""
        frame, scale = cache.next_block
        per_frame = TokenLayout(1, tuple(cache.scale_sizes)).num_tokens
        h, w = cache.scale_sizes[scale]
        if scale_input is None or scale_input.dim() != 3 or scale_input.shape[1] == h * w:
            return 0
        if scale != 0 or scale_input.shape[1] % per_frame:
            raise ValueError(
                f"A cached pass of several blocks takes whole frames from a frame's start: `scale_inputs` "
                f"(B, F * {per_frame}, {self.config.latent_bits}) at scale 0; got {tuple(scale_input.shape)} at frame "
                f"{frame}, scale {scale}."
            )
        return scale_input.shape[1] // per_frame

    @property
    def _causal_text(self) -> bool:
        return self.config.text_attention == "causal"

    def _check_conditioning(self, text_hidden_states, class_labels) -> None:
        """A text model takes text, a class-conditional one class labels; the other kind is an error."""
        if self.config.is_class_conditional and text_hidden_states is not None:
            raise ValueError(
                f"This transformer is class-conditional (`num_classes={self.config.num_classes}`): pass "
                "`class_labels`, not `text_hidden_states`."
            )
        if not self.config.is_class_conditional and class_labels is not None:
            raise ValueError(
                "This transformer is text-conditional: pass `text_hidden_states`. `class_labels` need a model whose "
                "config sets `num_classes`."
            )

    def _embed_prefix(self, text_hidden_states, text_attention_mask, class_labels):
        """`(B, L, C)` prefix and its `(B, L)` validity: the prompt's text states, or one class token."""
        if self.config.is_class_conditional:
            if class_labels is None:
                raise ValueError(
                    f"A class-conditional transformer needs `class_labels` (ids 0..{self.config.num_classes - 1}, "
                    f"{self.config.null_class_id} for the null class) on its teacher-forced and first cached pass."
                )
            return self._embed_class(class_labels)
        if text_hidden_states is None:
            raise ValueError("A text-to-video transformer needs `text_hidden_states` on its teacher-forced and first "
                             "cached pass.")  # fmt: skip
        return self._embed_text(text_hidden_states, text_attention_mask)

    def _embed_class(self, class_labels):
        num_classes = self.config.num_classes
        if not torch.is_tensor(class_labels) or class_labels.ndim != 1 or class_labels.is_floating_point():
            raise ValueError(
                f"`class_labels` must be a (B,) integer tensor, got "
                f"{tuple(class_labels.shape) if torch.is_tensor(class_labels) else type(class_labels).__name__}."
            )
        if ((class_labels < 0) | (class_labels > num_classes)).any():
            raise ValueError(
                f"`class_labels` must be in 0..{num_classes} ({num_classes} is the null class), got "
                f"{class_labels.tolist()}."
            )
        class_B1C = self.class_embed(class_labels.to(self.device, torch.long))[:, None]
        return class_B1C, torch.ones(class_B1C.shape[:2], dtype=torch.bool, device=self.device)

    def _bitwise_loss(self, logits_BNd, labels, layout: TokenLayout) -> torch.Tensor:
        """Binary cross-entropy of every bit, averaged over the bits of a token and over the samples; over the tokens
        weighted by `config.loss_scale_weighting` (`scale_loss_weights`). Tokens labelled `IGNORE_INDEX` count for
        nothing; each sample averages over the tokens it keeps."""
        labels_BNd = (labels if torch.is_tensor(labels) else pack_scales(labels)).float()
        keep_BN = labels_BNd[..., 0] != IGNORE_INDEX
        if self.config.loss_scale_weighting == "uniform" and keep_BN.all():
            return F.binary_cross_entropy_with_logits(logits_BNd.float(), labels_BNd)
        bits_BNd = labels_BNd.clamp(min=0)  # ignored tokens weigh 0 below; any bit value keeps their loss finite
        loss_BN = F.binary_cross_entropy_with_logits(logits_BNd.float(), bits_BNd, reduction="none").mean(-1)
        weights_BN = scale_loss_weights(layout, self.config.loss_scale_weighting).to(loss_BN.device) * keep_BN
        return ((loss_BN * weights_BN).sum(-1) / weights_BN.sum(-1).clamp(min=1e-12)).mean()

    def _pack_inputs(self, scale_inputs, latent_size) -> tuple[torch.Tensor, TokenLayout]:
        """Teacher-forced inputs as one `(B, N, d)` tensor, and the token layout they fill."""
        if isinstance(scale_inputs, (list, tuple)):
            B, T, H, W, _ = scale_inputs[-1].shape
            layout = TokenLayout(T, tuple(self.scale_sizes(H, W)))
            if [tuple(x.shape[2:4]) for x in scale_inputs] != list(layout.scale_sizes):
                raise ValueError(
                    f"`scale_inputs` have sizes {[tuple(x.shape[2:4]) for x in scale_inputs]}, but the scale schedule "
                    f"{self.config.scale_schedule} gives {list(layout.scale_sizes)} for a {H}x{W} latent grid."
                )
            return pack_scales(scale_inputs), layout
        if not torch.is_tensor(scale_inputs) or scale_inputs.ndim != 3 or scale_inputs.shape[-1] != self.config.latent_bits:
            raise ValueError(
                f"`scale_inputs` must be a list of per-scale (B, T, h_k, w_k, {self.config.latent_bits}) tensors or one "
                f"packed (B, N, {self.config.latent_bits}) tensor, got "
                f"{tuple(scale_inputs.shape) if torch.is_tensor(scale_inputs) else type(scale_inputs).__name__}."
            )
        N = scale_inputs.shape[1]
        if latent_size is None:
            sides = [s for s in self.config.scale_schedule if N % TokenLayout(1, tuple(self.scale_sizes(s, s))).num_tokens == 0]
            latent_size = (sides[-1], sides[-1]) if sides else (0, 0)
        tokens_per_frame = TokenLayout(1, tuple(self.scale_sizes(*latent_size))).num_tokens
        if N == 0 or N % tokens_per_frame:
            raise ValueError(
                f"Packed `scale_inputs` hold {N} tokens, not a whole number of frames of {tokens_per_frame} tokens for "
                f"the latent grid {latent_size}; pass `latent_size`."
            )
        return scale_inputs, TokenLayout(N // tokens_per_frame, tuple(self.scale_sizes(*latent_size)))

    def _embed_text(self, text_hidden_states, text_attention_mask):
        B, L, C = text_hidden_states.shape
        if C != self.config.text_hidden_size:
            raise ValueError(
                f"`text_hidden_states` have width {C}, but the transformer expects `text_hidden_size` "
                f"{self.config.text_hidden_size}."
            )
        if text_attention_mask is None:
            text_attention_mask = torch.ones(B, L, device=self.device)
        text_valid_BL = text_attention_mask.to(device=self.device, dtype=torch.bool)
        if not text_valid_BL.any(-1).all():
            raise ValueError("Every sample needs at least one unmasked text token in `text_attention_mask`.")
        text_BLC = self.text_proj(self.text_norm(text_hidden_states.to(device=self.device, dtype=self.dtype)))
        return text_BLC, text_valid_BL

    def _embed_video(self, inputs_BNd: torch.Tensor, coords_N4: torch.Tensor) -> torch.Tensor:
        video_BNC = self.input_proj(inputs_BNd.to(self.dtype))
        is_start = (coords_N4[:, 0] == 0) & (coords_N4[:, 1] == 0)
        video_BNC = torch.where(is_start[None, :, None], self.start_token.to(video_BNC.dtype), video_BNC)
        return video_BNC + self.scale_embed(coords_N4[:, 1])

    def _join(self, prefix_BLC, prefix_valid_BL, prefix_lengths_B, video_BNC, coords_N4, layout):
        """Put the prefix (text or class token; none after a cache's first block) before the video tokens; return the
        sequence with each token's block id, frame, RoPE position and validity (False on text padding). Positions
        count the real prefix tokens only (`prefix_lengths_B`, `prefix_position_ids`), never the padding."""
        B, N, _ = video_BNC.shape
        blocks_N = coords_N4[:, 0] * layout.num_scales + coords_N4[:, 1]
        frames_N = coords_N4[:, 0]
        position_ids_BN3 = video_position_ids(
            coords_N4, prefix_lengths_B, layout.scale_sizes, self.config.rope_spatial_positions
        )
        valid_BN = torch.ones(B, N, dtype=torch.bool, device=self.device)
        if prefix_BLC is None:
            return video_BNC, blocks_N, frames_N, position_ids_BN3, valid_BN
        prefix_ids_L = torch.full((prefix_BLC.shape[1],), TEXT_BLOCK, device=self.device, dtype=blocks_N.dtype)
        return (
            torch.cat([prefix_BLC, video_BNC], dim=1),
            torch.cat([prefix_ids_L, blocks_N]),
            torch.cat([prefix_ids_L, frames_N]),
            torch.cat([prefix_position_ids(prefix_valid_BL), position_ids_BN3], dim=1),
            torch.cat([prefix_valid_BL, valid_BN], dim=1),
        )

    def _run_layers(self, hidden_BNC, position_ids_BN3, mask: BlockCausalRule | torch.Tensor,
                    cache: VideoARCache | None = None, reusable_mask: bool = True):  # fmt: skip
        """`mask`: the pass's `BlockCausalRule`, or a boolean `(B, 1, N, M)` mask; `reusable_mask=False` keeps a
        BlockMask that will never recur (a Random Frame Mask draw) out of the cache."""
        position_embeddings = self.rotary_emb(position_ids_BN3, hidden_BNC.dtype)
        attention_mask = self._attention_mask(mask, hidden_BNC, reusable_mask)
        for layer in self.layers:
            hidden_BNC = layer(hidden_BNC, position_embeddings, attention_mask, cache=cache)
        return hidden_BNC

    def _attention_mask(self, mask, hidden_BNC: torch.Tensor, reusable: bool):
        """The mask in the form the attention implementation takes, built once for every layer (docs/method.md §3).

        SDPA and eager get additive masks in the compute dtype, not boolean ones: SDPA turns a boolean mask into that
        form inside every call, and in training keeps one converted copy per layer for the backward."""
        device_type = hidden_BNC.device.type
        # under autocast SDPA would cast an fp32 mask to the autocast dtype in every layer, and keep each copy
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden_BNC.dtype
        if torch.is_tensor(mask):  # a ready boolean mask (the next-token baseline builds its own)
            return to_additive_mask(mask, dtype)
        if self.config._attn_implementation == "sdpa" and mask.query_frames_N[0] != mask.query_frames_N[-1]:
            return mask.frame_bands(dtype)  # several query frames (teacher forcing, a prefill); a sampling step has one
        if self.config._attn_implementation != "flex_attention":
            return mask.dense(dtype)
        if hidden_BNC.requires_grad and device_type == "cpu":
            raise ValueError(
                "attn_implementation='flex_attention' cannot train on CPU: torch's flex attention has no backward pass "
                "there. Use attn_implementation='sdpa' (`model.set_attn_implementation('sdpa')`) to train on CPU, run "
                "this pass under `torch.no_grad()`, or train on a GPU."
            )
        return self.block_mask_cache.get(mask) if reusable else mask.block_mask()
