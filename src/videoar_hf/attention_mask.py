"""The block-wise causal mask over `[text][frame 0: scales 1..K][frame 1: scales 1..K]...` (docs/method.md §3).

A token sees the valid text tokens, every block of earlier frames, and the blocks of its own frame up to its own
scale (full attention inside a block). Text tokens see the text only: all of it, or, with `causal_text`
(`text_attention="causal"`), the text tokens up to their own. One rule, `BlockCausalRule.__call__`, decides
each (query, key) pair: it is flex attention's `mask_mod`, and it is evaluated on index grids to build the dense
mask that SDPA and eager attention take. The teacher-forced forward and every cached sampling step use it, so no
two paths can disagree.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

TEXT_BLOCK = -1  # block and frame index of text tokens
FLEX_BLOCK_SIZE = 128  # flex attention's default sparse block (torch's _DEFAULT_SPARSE_BLOCK_SIZE)
_CHUNK_ELEMENTS = 1 << 22  # dense masks are built this many elements at a time: bounded intermediates


@dataclass(frozen=True, eq=False)
class BlockCausalRule:
    """Who may see whom, from per-token tables.

    Blocks are numbered `t * K + k` for video and `TEXT_BLOCK` for text; `key_valid_BM` is False on text padding.
    `frame_keep_BTT[b, t, s]` says whether frame t may see the earlier frame s (Random Frame Mask and its window).
    `causal_text`: a text query sees the text keys up to its own index only. The text is the prefix of both tables
    whenever text queries exist (teacher forcing, a cache's first block), so a text token's index in either table is
    its place in the prompt.
    """

    query_blocks_N: torch.Tensor
    query_frames_N: torch.Tensor
    key_blocks_M: torch.Tensor
    key_frames_M: torch.Tensor
    key_valid_BM: torch.Tensor
    frame_keep_BTT: torch.Tensor | None = None
    causal_text: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, M): batch, queries, keys."""
        return self.key_valid_BM.shape[0], self.query_blocks_N.shape[0], self.key_blocks_M.shape[0]

    def __call__(self, b: torch.Tensor, h, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """True where query `q` of sample `b` may attend to key `k`. flex attention's `mask_mod` signature: flex
        passes 0-d indices, `dense` passes broadcastable index grids; `h` is unused (every head has the same mask)."""
        q_block, q_frame = self.query_blocks_N[q], self.query_frames_N[q]
        k_block, k_frame = self.key_blocks_M[k], self.key_frames_M[k]
        visible = (k_block <= q_block) & self.key_valid_BM[b, k]
        if self.causal_text:
            visible = visible & ((q_block != TEXT_BLOCK) | (k <= q))
        if self.frame_keep_BTT is None:
            return visible
        keep = self.frame_keep_BTT[b, q_frame.clamp(min=0), k_frame.clamp(min=0)]
        # the frame mask only ever removes earlier video frames; text and the query's own frame stay visible
        exempt = (k_frame == TEXT_BLOCK) | (k_frame >= q_frame)
        return visible & (keep | exempt)

    def rows(self, start: int, stop: int, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean `(B, 1, stop - start, M)`: the rule on queries `start..stop` against every key, or against the
        key indices `keys` only."""
        B, _, M = self.shape
        device = self.key_valid_BM.device
        b = torch.arange(B, device=device)[:, None, None, None]
        q = torch.arange(start, stop, device=device)[None, None, :, None]
        k = (torch.arange(M, device=device) if keys is None else keys)[None, None, None, :]
        return self(b, None, q, k).expand(B, 1, stop - start, k.shape[-1])

    def _row_chunks(self, multiple: int = 1):
        B, N, M = self.shape
        step = max(multiple, _CHUNK_ELEMENTS // max(1, B * M) // multiple * multiple)
        for start in range(0, N, step):
            yield start, min(N, start + step)

    def dense(self, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """The `(B, 1, N, M)` mask: boolean, or additive in `dtype` (0 where visible, the dtype's minimum elsewhere:
        what eager and SDPA attention take). Written a chunk of rows at a time into the result, so building it costs
        its own size plus a few chunks, not several full-size intermediates. The last dimension is a view of rows
        padded to a multiple of 16 elements."""
        B, N, M = self.shape
        out = _aligned_empty(B, N, M, dtype, self.key_valid_BM.device)
        for start, stop in self._row_chunks():
            _fill(out[:, :, start:stop], self.rows(start, stop))
        return out

    def frame_bands(self, dtype: torch.dtype) -> "FrameBands":
        """The rule split by query frame (the text queries are one band more): each band's queries against the keys
        any of them may see, with its additive mask in `dtype`. A frame sees no later frame and, with a frame window,
        no frame before it, so SDPA over the bands skips work that a dense mask computes and then masks out: about
        half of it for a clip of 17 latent frames in a window of 8 (benchmarks/frame_bands.py)."""
        B = self.shape[0]
        device = self.key_valid_BM.device
        query_frames, query_sizes = torch.unique_consecutive(self.query_frames_N, return_counts=True)
        key_frames_R, key_sizes_R = torch.unique_consecutive(self.key_frames_M, return_counts=True)
        key_starts = [0, *torch.cumsum(key_sizes_R, 0).tolist()]
        masks, key_runs, start = [], [], 0
        for frame, size in zip(query_frames.tolist(), query_sizes.tolist()):
            earliest = 0  # the first frame that any sample's queries of this frame keep
            if frame != TEXT_BLOCK and self.frame_keep_BTT is not None:
                earliest = int(self.frame_keep_BTT[:, frame, : frame + 1].any(0).nonzero()[0])
            seen_R = (key_frames_R == TEXT_BLOCK) | ((key_frames_R >= earliest) & (key_frames_R <= frame))
            runs = None if bool(seen_R.all()) else seen_R.nonzero().squeeze(1).tolist()
            keys = None if runs is None else torch.cat(
                [torch.arange(key_starts[r], key_starts[r + 1], device=device) for r in runs])  # fmt: skip
            visible = self.rows(start, start + size, keys)
            mask = _aligned_empty(B, size, visible.shape[-1], dtype, device)
            _fill(mask, visible)
            masks.append(mask)
            key_runs.append(runs)
            start += size
        return FrameBands(query_sizes.tolist(), key_sizes_R.tolist(), key_runs, masks)

    def block_mask(self, block_size: int = FLEX_BLOCK_SIZE):
        """The flex attention `BlockMask` of this rule, with the rule as its `mask_mod`.

        What `create_block_mask` computes (a tile of `block_size` x `block_size` is skipped when no pair in it is
        visible, and runs without `mask_mod` when all are), but evaluated a chunk of query tiles at a time: the dense
        `(B, N, M)` mask is never held at once."""
        from torch.nn.attention.flex_attention import BlockMask

        B, N, M = self.shape
        kv_tiles = -(-M // block_size)
        partial, full = [], []
        for start, stop in self._row_chunks(block_size):
            visible = self.rows(start, stop)
            rows = -(-(stop - start) // block_size) * block_size
            visible = torch.nn.functional.pad(visible, (0, kv_tiles * block_size - M, 0, rows - (stop - start)))
            tiles = visible.view(B, 1, rows // block_size, block_size, kv_tiles, block_size)
            full.append(tiles.all(dim=5).all(dim=3))  # any/all: a sum would widen the chunk to int64
            partial.append(tiles.any(dim=5).any(dim=3) & ~full[-1])
        return BlockMask.from_kv_blocks(
            *_ordered(torch.cat(partial, dim=2)), *_ordered(torch.cat(full, dim=2)), BLOCK_SIZE=block_size,
            mask_mod=self._for_kernel(), seq_lengths=(N, M),
        )  # fmt: skip

    def _for_kernel(self) -> "BlockCausalRule":
        """The rule the compiled kernel reads. On CPU its tables are padded to a few bucket sizes and marked static:
        inductor's CPU flex kernel (torch 2.13) fails to compile when a `mask_mod`'s tables change size between calls
        (`CppCompileError: 'cur_kvSplitSize5' was not declared`). Static tables of every new length would each be a new
        compilation; padded to buckets x4 apart, only a new bucket is. GPUs take the tables as they are."""
        if self.key_valid_BM.device.type != "cpu":
            return self
        _, N, M = self.shape
        tokens = 256
        while tokens < max(N, M):
            tokens *= 4
        padded = dict(
            query_blocks_N=_pad_to(self.query_blocks_N, (tokens,)),
            query_frames_N=_pad_to(self.query_frames_N, (tokens,)),
            key_blocks_M=_pad_to(self.key_blocks_M, (tokens,)),
            key_frames_M=_pad_to(self.key_frames_M, (tokens,)),
            key_valid_BM=_pad_to(self.key_valid_BM, (self.key_valid_BM.shape[0], tokens)),
        )
        if self.frame_keep_BTT is not None:
            B, T, _ = self.frame_keep_BTT.shape
            frames = max(64, 1 << (T - 1).bit_length())
            padded["frame_keep_BTT"] = _pad_to(self.frame_keep_BTT, (B, frames, frames))
        for table in padded.values():
            torch._dynamo.mark_static(table)
        return replace(self, **padded)

    def fingerprint(self) -> tuple:
        """A key equal for two rules exactly when their tables are: the `BlockMaskCache` key."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(b"causal text" if self.causal_text else b"bidirectional text")
        for table in (self.query_blocks_N, self.query_frames_N, self.key_blocks_M, self.key_frames_M,
                      self.key_valid_BM, self.frame_keep_BTT):  # fmt: skip
            if table is None:
                digest.update(b"none")
                continue
            digest.update(f"{tuple(table.shape)}{table.dtype}".encode())
            digest.update(table.detach().contiguous().cpu().numpy().tobytes())
        return str(self.key_valid_BM.device), digest.hexdigest()


@dataclass(frozen=True)
class FrameBands:
    """A `BlockCausalRule` split by query frame (`frame_bands`). The queries are runs of `query_sizes` (the text, then
    one run per frame), the keys runs of `key_sizes`; band i is query run i against the key runs `key_runs[i]` (`None`:
    every key), with the mask `masks[i]`, `(B, 1, queries, keys)`."""

    query_sizes: list[int]
    key_sizes: list[int]
    key_runs: list[list[int] | None]
    masks: list[torch.Tensor]

    def attend(self, attention: Callable, q_BHNd: torch.Tensor, k_BHMd: torch.Tensor, v_BHMd: torch.Tensor
               ) -> torch.Tensor:  # fmt: skip
        """`attention(q, k, v, mask) -> (B, n, H, d)` over every band, joined into `(B, N, H, d)`. Split, not sliced:
        the backward of a split is one `cat`, where every slice would fill a zero tensor of the full size."""
        k_runs, v_runs = k_BHMd.split(self.key_sizes, dim=2), v_BHMd.split(self.key_sizes, dim=2)
        outputs = []
        for q, runs, mask in zip(q_BHNd.split(self.query_sizes, dim=2), self.key_runs, self.masks):
            k, v = (k_BHMd, v_BHMd) if runs is None else (torch.cat([k_runs[r] for r in runs], 2),
                                                          torch.cat([v_runs[r] for r in runs], 2))  # fmt: skip
            outputs.append(attention(q, k, v, mask))
        return torch.cat(outputs, dim=1)


def _aligned_empty(B: int, N: int, M: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An empty `(B, 1, N, M)` mask whose rows start on a multiple of 16 elements: SDPA's memory-efficient kernel
    copies a bias whose strides are not aligned, in every call, and in training keeps each layer's copy for the
    backward."""
    aligned = -(-M // 16) * 16
    return torch.empty((B, 1, N, aligned), dtype=dtype, device=device)[..., :M]


def _fill(out: torch.Tensor, visible: torch.Tensor) -> None:
    """Write a boolean mask into `out`: as it is, or additive (0 where visible, the dtype's minimum elsewhere)."""
    if out.dtype == torch.bool:
        out.copy_(visible)
    else:
        torch.where(visible, out.new_zeros(()), out.new_full((), torch.finfo(out.dtype).min), out=out)


def _ordered(tiles_BHQK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query tile: how many key tiles are set, and their indices first (the `BlockMask.from_kv_blocks` form)."""
    tiles = tiles_BHQK.to(torch.int32)
    order = torch.argsort(tiles, dim=-1, descending=True, stable=True)
    return tiles.sum(-1).to(torch.int32), order.to(torch.int32)


def _pad_to(table: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=table.dtype, device=table.device)
    out[tuple(slice(0, n) for n in table.shape)] = table
    return out


class BlockMaskCache:
    """The `BlockMask`s of the last `max_size` token layouts, keyed on the rule's tables (token blocks and frames,
    key validity, frame-keep table), least recently used dropped first.

    Only deterministic masks belong here: a teacher-forced pass with a Random Frame Mask draws a new table every
    step, so its mask would never be hit again; the caller builds it without the cache."""

    def __init__(self, max_size: int = 32):
        self.max_size = max_size
        self.hits = self.misses = 0
        self._masks: OrderedDict = OrderedDict()

    def get(self, rule: BlockCausalRule):
        key = rule.fingerprint()
        if key in self._masks:
            self.hits += 1
            self._masks.move_to_end(key)
            return self._masks[key]
        self.misses += 1
        self._masks[key] = mask = rule.block_mask()
        if len(self._masks) > self.max_size:
            self._masks.popitem(last=False)
        return mask

    def __len__(self) -> int:
        return len(self._masks)

    def clear(self) -> None:
        self._masks.clear()


def block_causal_mask(
    query_blocks_N: torch.Tensor,
    query_frames_N: torch.Tensor,
    key_blocks_M: torch.Tensor,
    key_frames_M: torch.Tensor,
    key_valid_BM: torch.Tensor,
    frame_keep_BTT: torch.Tensor | None = None,
    causal_text: bool = False,
) -> torch.Tensor:
    """Boolean mask `(B, 1, N, M)`, True where a query may attend to a key (`BlockCausalRule`, densely)."""
    return BlockCausalRule(
        query_blocks_N, query_frames_N, key_blocks_M, key_frames_M, key_valid_BM, frame_keep_BTT, causal_text
    ).dense()


def frame_window_keep(batch_size: int, num_frames: int, window: int | None, device=None,
                      sample_windows_B: torch.Tensor | None = None) -> torch.Tensor | None:  # fmt: skip
    """`(B, T, T)` keep table that lets frame t see only frames `t - window .. t`; `None` when unlimited.
    `sample_windows_B` narrows it per sample: sample b sees frames `t - sample_windows_B[b] .. t` at most."""
    if window is None and sample_windows_B is None:
        return None
    t = torch.arange(num_frames, device=device)
    lag_TT = t[:, None] - t[None, :]
    keep = (lag_TT <= (num_frames if window is None else window))[None].expand(batch_size, -1, -1)
    if sample_windows_B is not None:
        keep = keep & (lag_TT[None] <= sample_windows_B.to(device)[:, None, None])
    return keep


def to_additive_mask(mask_B1NM: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where visible, the dtype's minimum elsewhere: the form eager and SDPA take, filled in place (a boolean mask
    handed to SDPA is converted to this inside every call, and kept once per layer for the backward)."""
    out = torch.empty(mask_B1NM.shape, dtype=dtype, device=mask_B1NM.device)
    _fill(out, mask_B1NM)
    return out
