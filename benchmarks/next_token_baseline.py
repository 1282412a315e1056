"""The baseline VideoAR is measured against: a next-token AR decode of the same latent grid with the same transformer.

It samples the finest latent grid (`T' x h x w` tokens, as MAGVIT-v2-AR or PAR do) one token per forward pass, with
a KV cache and classifier-free guidance in one batch, then decodes with the same tokenizer. Everything but the
sampling loop is the pipeline's own (text encoder, tokenizer, transformer layers), so the timing difference is the
loop. The weights are random: speed does not depend on them, and the output is not a meaningful video.
"""

import torch

from videoar_hf import VideoARPipeline
from videoar_hf.cache import VideoARCache
from videoar_hf.rope import text_position_ids, video_position_ids
from videoar_hf.sampling import sample_bits


@torch.inference_mode()
def next_token_generate(
    pipe: VideoARPipeline, prompt: str, num_frames: int, height: int, width: int, guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Frames `(1, 3, F, H, W)` and the number of transformer forward passes."""
    transformer, tokenizer = pipe.transformer, pipe.video_tokenizer
    device = pipe._execution_device
    f = tokenizer.config.spatial_compression_ratio
    T, h, w = tokenizer.num_latent_frames(num_frames), height // f, width // f
    scale_sizes = transformer.scale_sizes(h, w)
    finest = len(scale_sizes) - 1
    d = transformer.config.latent_bits

    text_states, text_mask = pipe._encode_texts([prompt, ""], None, device)  # conditional and unconditional, one batch
    text_BLC, valid_BM = transformer._embed_text(text_states, text_mask)
    B, L = valid_BM.shape
    text_lengths_B = valid_BM.sum(-1)
    cache = VideoARCache(transformer.config.num_hidden_layers, [(h, w)])
    codes_BThwd = torch.zeros(1, T, h, w, d, device=device)
    previous_code_B1d = torch.zeros(B, 1, d, device=device)
    for i in range(T * h * w):
        t, row, col = i // (h * w), i // w % h, i % w
        coords_14 = torch.tensor([[t, finest, row, col]], device=device)
        token_B1C = transformer._embed_video(previous_code_B1d, coords_14)
        if i == 0:
            token_B1C = transformer.start_token.to(token_B1C.dtype).expand(B, 1, -1)
        position_ids_B13 = video_position_ids(
            coords_14, text_lengths_B, scale_sizes, transformer.config.rope_spatial_positions
        )
        if i == 0:  # the text prefix rides along with the first token
            hidden_BNC = torch.cat([text_BLC, token_B1C], dim=1)
            position_ids = torch.cat([text_position_ids(B, L, device), position_ids_B13], dim=1)
        else:
            hidden_BNC, position_ids = token_B1C, position_ids_B13
        n = hidden_BNC.shape[1]
        valid_BM = torch.cat([valid_BM, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        causal_NM = torch.ones(n, valid_BM.shape[1], dtype=torch.bool, device=device).tril(valid_BM.shape[1] - n)
        mask_B1NM = (causal_NM[None] & valid_BM[:, None, :])[:, None]
        hidden_BNC = transformer._run_layers(hidden_BNC, position_ids, mask_B1NM, cache)
        logits_Bd = transformer.bit_head(transformer.norm(hidden_BNC[:, -1])).float()
        cond, uncond = logits_Bd.chunk(2)
        bits_1d = sample_bits(uncond + guidance_scale * (cond - uncond), generator=generator)
        code_1d = tokenizer.quantizer.codes_from_bits(bits_1d)
        codes_BThwd[0, t, row, col] = code_1d[0]
        previous_code_B1d = code_1d[:, None].expand(B, 1, d)
    features = codes_BThwd.permute(0, 4, 1, 2, 3).to(tokenizer.dtype)  # (1, d, T', h, w)
    return tokenizer.decode(features).sample, T * h * w
