"""KV cache over (frame, scale) blocks for sampling."""

import torch

from .attention_mask import TEXT_BLOCK


class VideoARCache:
    """Keys and values of every layer, plus what the block-causal mask needs to know about each cached token.

    The cache also counts the blocks it holds, so `VideoARTransformer.step` always runs the next (frame, scale) in
    order. A fresh cache is empty; the first step writes the text prefix and the first block together.
    """

    def __init__(self, num_layers: int, scale_sizes: list[tuple[int, int]]):
        self.scale_sizes = list(scale_sizes)
        self.num_blocks = 0
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.token_blocks: torch.Tensor | None = None  # (M,) block index, TEXT_BLOCK for text
        self.token_frames: torch.Tensor | None = None  # (M,)
        self.token_valid: torch.Tensor | None = None  # (B, M), False on text padding
        self.text_lengths: torch.Tensor | None = None  # (B,) unpadded text length of each sample

    @property
    def is_empty(self) -> bool:
        return self.token_blocks is None

    @property
    def next_block(self) -> tuple[int, int]:
        """(frame, scale) of the block the next step runs."""
        return divmod(self.num_blocks, len(self.scale_sizes))

    def append_tokens(self, blocks_N: torch.Tensor, frames_N: torch.Tensor, valid_BN: torch.Tensor) -> None:
        """Record the tokens of one step (text prefix included on the first); counts as one block."""
        self.num_blocks += 1
        if self.is_empty:
            self.token_blocks, self.token_frames, self.token_valid = blocks_N, frames_N, valid_BN
            self.text_lengths = valid_BN[:, blocks_N == TEXT_BLOCK].sum(-1)
            return
        self.token_blocks = torch.cat([self.token_blocks, blocks_N])
        self.token_frames = torch.cat([self.token_frames, frames_N])
        self.token_valid = torch.cat([self.token_valid, valid_BN], dim=1)

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
        self.keys = [None if k is None else k[:, :, keep_M] for k in self.keys]
        self.values = [None if v is None else v[:, :, keep_M] for v in self.values]

    def update(self, layer_idx: int, key_BHNd: torch.Tensor, value_BHNd: torch.Tensor):
        """Append one layer's new keys and values; return all of them."""
        if self.keys[layer_idx] is not None:
            key_BHNd = torch.cat([self.keys[layer_idx], key_BHNd], dim=2)
            value_BHNd = torch.cat([self.values[layer_idx], value_BHNd], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key_BHNd, value_BHNd
        return key_BHNd, value_BHNd
