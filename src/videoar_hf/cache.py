"""KV cache over (frame, scale) blocks for sampling: a transformers `Cache` that also knows the token layout."""

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .attention_mask import TEXT_BLOCK


class VideoARCache(Cache):
    """Keys and values of every layer (transformers' `DynamicLayer`s, `update(key, value, layer_idx)` as usual), plus
    what the block-causal mask needs to know about each cached token.

    The cache also counts the blocks it holds, so `VideoARTransformer.forward(..., cache=cache)` always runs the next
    (frame, scale) in order. A fresh cache is empty; the first call writes the prefix (text, or a class-conditional
    model's class token) and the first block together.
    """

    def __init__(self, num_layers: int, scale_sizes: list[tuple[int, int]], sample_windows: torch.Tensor | None = None):
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])
        self.scale_sizes = [tuple(size) for size in scale_sizes]
        # (B,) past latent frames each sample may see, inside the model's own window (history guidance); None: all
        self.sample_windows = sample_windows
        self.num_blocks = 0
        self.token_blocks: torch.Tensor | None = None  # (M,) block index, TEXT_BLOCK for text
        self.token_frames: torch.Tensor | None = None  # (M,)
        self.token_valid: torch.Tensor | None = None  # (B, M), False on text padding
        self.text_lengths: torch.Tensor | None = None  # (B,) real prefix tokens of each sample: video positions follow

    @property
    def is_empty(self) -> bool:
        return self.token_blocks is None

    @property
    def next_block(self) -> tuple[int, int]:
        """(frame, scale) of the block the next call runs."""
        return divmod(self.num_blocks, len(self.scale_sizes))

    def append_tokens(self, blocks_N: torch.Tensor, frames_N: torch.Tensor, valid_BN: torch.Tensor,
                      num_blocks: int = 1) -> None:  # fmt: skip
        """Record the tokens of one block, or of `num_blocks` prefilled ones (the prefix included on the first)."""
        self.num_blocks += num_blocks
        if self.is_empty:
            self.token_blocks, self.token_frames, self.token_valid = blocks_N, frames_N, valid_BN
            self.text_lengths = valid_BN[:, blocks_N == TEXT_BLOCK].sum(-1)
            return
        self.token_blocks = torch.cat([self.token_blocks, blocks_N])
        self.token_frames = torch.cat([self.token_frames, frames_N])
        self.token_valid = torch.cat([self.token_valid, valid_BN], dim=1)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the samples `indices`, e.g. the conditional half once classifier-free guidance is over."""
        super().batch_select_indices(indices)
        if self.sample_windows is not None:
            self.sample_windows = self.sample_windows[indices.to(self.sample_windows.device)]
        if not self.is_empty:
            self.token_valid, self.text_lengths = self.token_valid[indices], self.text_lengths[indices]

    def drop_frames_before(self, frame: int) -> None:
        """Forget the keys and values of video frames before `frame` (the text prefix stays): with a frame window,
        nothing can attend to them any more, and the cache stops growing with the video."""
        if self.is_empty:
            return
        keep_M = (self.token_frames == TEXT_BLOCK) | (self.token_frames >= frame)
        if keep_M.all():
            return
        self.token_blocks, self.token_frames = self.token_blocks[keep_M], self.token_frames[keep_M]
        self.token_valid = self.token_valid[:, keep_M]
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys[:, :, keep_M], layer.values[:, :, keep_M]
