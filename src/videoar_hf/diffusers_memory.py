"""diffusers' model-level memory helpers for a transformers model: the same methods a diffusers `ModelMixin` has.

The transformer is a transformers `PreTrainedModel`, so it lacks `enable_layerwise_casting` and
`enable_group_offload`; both are thin calls into diffusers' own hooks, with diffusers' defaults.
"""

import torch
from diffusers.hooks import apply_group_offloading, apply_layerwise_casting
from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN


class DiffusersMemoryMixin:
    # small, precision-sensitive layers keep their dtype, as diffusers keeps norms and embeddings
    _skip_layerwise_casting_patterns: tuple[str, ...] = ("norm", "scale_embed", "bit_head")

    def enable_layerwise_casting(
        self,
        storage_dtype: torch.dtype = torch.float8_e4m3fn,
        compute_dtype: torch.dtype | None = None,
        skip_modules_pattern: tuple[str, ...] | None = None,
        skip_modules_classes: tuple[type[torch.nn.Module], ...] | None = None,
        non_blocking: bool = False,
    ) -> None:
        """Store weights in `storage_dtype` and cast each layer to `compute_dtype` (the model's dtype by default)
        just for its forward, as `diffusers.ModelMixin.enable_layerwise_casting` does."""
        if skip_modules_pattern is None:
            skip_modules_pattern = tuple(set(DEFAULT_SKIP_MODULES_PATTERN + self._skip_layerwise_casting_patterns))
        apply_layerwise_casting(
            self, storage_dtype, compute_dtype or self.dtype, skip_modules_pattern, skip_modules_classes, non_blocking
        )

    def enable_group_offload(
        self,
        onload_device: torch.device,
        offload_device: torch.device = torch.device("cpu"),
        offload_type: str = "block_level",
        num_blocks_per_group: int | None = None,
        **kwargs,
    ) -> None:
        """Keep weights on `offload_device` and move groups of layers to `onload_device` only while they run, as
        `diffusers.ModelMixin.enable_group_offload` does (the remaining keyword arguments are
        `apply_group_offloading`'s)."""
        if offload_type == "block_level" and num_blocks_per_group is None:
            num_blocks_per_group = 1
        apply_group_offloading(
            self, onload_device=onload_device, offload_device=offload_device, offload_type=offload_type,
            num_blocks_per_group=num_blocks_per_group, **kwargs,
        )  # fmt: skip
