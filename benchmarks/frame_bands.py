"""SDPA over frame bands against SDPA over one dense mask, in training.

A query of latent frame t may see the text, the frames before it inside the window and its own frame; a dense mask
makes SDPA compute every other (query, key) pair too and then mask it out. `BlockCausalRule.frame_bands` splits the
rule by query frame, so each band's queries meet only the keys they may see (docs/method.md §3). This times training
steps (forward, backward, AdamW) of the shipped transformer's size on stage III's clips (17 latent frames of 16x16,
scales 1-16, window 8, the Random Frame Mask), under bf16 autocast as `--mixed_precision bf16` trains, both ways in
this process, interleaved, and checks that the two losses agree.

    python benchmarks/frame_bands.py
"""

import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.attention_mask import BlockCausalRule
from videoar_hf.scale_schedule import get_scale_sizes

SCHEDULE = (1, 2, 4, 8, 16)  # the shipped model's: 341 tokens per latent frame
LATENT_FRAMES = 17  # 33 frames at x2, stage III
BATCH = 4
SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, latent_bits=32, text_hidden_size=64,
            frame_mask_window=8, frame_mask_prob=0.1)  # fmt: skip


def make_batch(config, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = get_scale_sizes(config.scale_schedule, 16, 16)
    inputs = [torch.randn(BATCH, LATENT_FRAMES, h, w, config.latent_bits, generator=g) for h, w in sizes]
    labels = [torch.rand(BATCH, LATENT_FRAMES, h, w, config.latent_bits, generator=g) > 0.5 for h, w in sizes]
    return inputs, labels, torch.randn(BATCH, 12, config.text_hidden_size, generator=g)


def time_step(model, optimizer, batch, dense: bool) -> tuple[float, float]:
    inputs, labels, text = batch
    torch.manual_seed(0)  # the same Random Frame Mask draw both ways
    # the baseline: SDPA over the rule's dense mask, the path before frame bands
    patch = mock.patch.object(BlockCausalRule, "frame_bands", BlockCausalRule.dense) if dense else nullcontext()
    start = time.perf_counter()
    with patch, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(inputs, text, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start, loss.item()


def frame_bands_section(repeats: int = 3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = VideoARConfig(**SIZE, scale_schedule=list(SCHEDULE))
    model = VideoARTransformer._from_config(config, attn_implementation="sdpa").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay put: both ways see the same model
    batch = make_batch(config, seed)
    losses = {"dense": time_step(model, optimizer, batch, True)[1], "bands": time_step(model, optimizer, batch, False)[1]}
    seconds = {"dense": [], "bands": []}
    for _ in range(repeats):  # interleaved, so load on the machine hits both alike
        for name in seconds:
            seconds[name].append(time_step(model, optimizer, batch, name == "dense")[0])
    per_step = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "setup": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M transformer, batch {BATCH} x "
                 f"{LATENT_FRAMES} latent frames of 16x16 (scales {list(SCHEDULE)}), window 8, bf16 autocast",
        "seconds_per_step": per_step,
        "losses": losses,
        "speedup": per_step["dense"] / per_step["bands"],
    }  # fmt: skip


def markdown(result: dict) -> str:
    s, losses = result["seconds_per_step"], result["losses"]
    return f"""Frame bands in training ({result['setup']}; forward, backward and an optimizer step on CPU)

| SDPA over | seconds per step | loss |
|---|---|---|
| one dense mask | {s['dense']:.2f} | {losses['dense']:.5f} |
| frame bands | {s['bands']:.2f} | {losses['bands']:.5f} |

Frame bands train **{result['speedup']:.2f}x** as fast.
"""


if __name__ == "__main__":
    result = frame_bands_section()
    out = Path(__file__).parent / "results"
    (out / "frame_bands.json").write_text(json.dumps(result, indent=2))
    (out / "frame_bands.md").write_text(markdown(result))
    print(markdown(result))
