"""The block-wise causal mask over `[text][frame 0: scales 1..K][frame 1: scales 1..K]...` (docs/method.md §3).

A token sees the valid text tokens, every block of earlier frames, and the blocks of its own frame up to its own
scale (full attention inside a block). Text tokens see the text only. One function builds the mask for the
teacher-forced forward and for every cached sampling step, so the two cannot disagree.
"""

import torch

TEXT_BLOCK = -1  # block and frame index of text tokens


def block_causal_mask(
    query_blocks_N: torch.Tensor,
    query_frames_N: torch.Tensor,
    key_blocks_M: torch.Tensor,
    key_frames_M: torch.Tensor,
    key_valid_BM: torch.Tensor,
    frame_keep_BTT: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask `(B, 1, N, M)`, True where a query may attend to a key.

    Blocks are numbered `t * K + k` for video and `TEXT_BLOCK` for text; `key_valid_BM` is False on text padding.
    `frame_keep_BTT[b, t, s]` says whether frame t may see the earlier frame s (Random Frame Mask and its window).
    """
    visible = (key_blocks_M[None, :] <= query_blocks_N[:, None])[None] & key_valid_BM[:, None, :]
    if frame_keep_BTT is not None:
        q_frame, k_frame = query_frames_N.clamp(min=0), key_frames_M.clamp(min=0)
        keep = frame_keep_BTT[:, q_frame[:, None], k_frame[None, :]]
        # the mask only ever removes earlier video frames; text and the query's own frame stay visible
        exempt = (key_frames_M[None, :] == TEXT_BLOCK) | (key_frames_M[None, :] >= query_frames_N[:, None])
        visible = visible & (keep | exempt[None])
    return visible[:, None]


def frame_window_keep(batch_size: int, num_frames: int, window: int | None, device=None) -> torch.Tensor | None:
    """`(B, T, T)` keep table that lets frame t see only frames `t - window .. t`; `None` when unlimited."""
    if window is None:
        return None
    t = torch.arange(num_frames, device=device)
    keep = (t[:, None] - t[None, :]) <= window
    return keep[None].expand(batch_size, -1, -1)


def to_additive_mask(mask_B1NM: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where visible, the dtype's minimum elsewhere: the form both eager and SDPA attention accept."""
    return torch.zeros(mask_B1NM.shape, dtype=dtype, device=mask_B1NM.device).masked_fill(
        ~mask_B1NM, torch.finfo(dtype).min
    )
