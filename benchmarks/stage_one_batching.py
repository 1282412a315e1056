"""Stage I throughput: images batched at the size of a video batch, against images batched apart at the cost of a
video batch (the training loop's default, `Trainer.batch_sizes`).

A stage I step trains on videos or, with probability `image_ratio`, on images (docs/method.md §7). An image is one
latent frame, a 17-frame clip five, so an image step at the video batch size does a fifth of a video step's work and
pays the same fixed cost per step. The benchmark times real training steps (forward, backward, AdamW) of the
shipped model's transformer size on random 128x128 token pyramids, and reports tokens per second over a stage I mix
for both rules, as a ratio measured in this process.

    python benchmarks/stage_one_batching.py
"""

import json
import statistics
import time
from pathlib import Path

import torch

from videoar_hf import VideoARConfig, VideoARTransformer
from videoar_hf.scale_schedule import get_scale_sizes

SCHEDULE = (1, 2, 3, 4, 6, 8)  # 128 px at x16: 8x8 latents, 6 scales, 130 tokens per latent frame
LATENT_FRAMES = 5  # 17 frames at x4
VIDEO_BATCH = 4
IMAGE_RATIO = 0.3  # examples/stages_shapes.yaml, stage I
SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, latent_bits=16, text_hidden_size=64)


def make_batch(config, batch_size: int, frames: int):
    sizes = get_scale_sizes(config.scale_schedule, 8, 8)
    inputs = [torch.randn(batch_size, frames, h, w, config.latent_bits) for h, w in sizes]
    labels = [torch.rand(batch_size, frames, h, w, config.latent_bits) > 0.5 for h, w in sizes]
    text = torch.randn(batch_size, 8, config.text_hidden_size)
    tokens = batch_size * frames * sum(h * w for h, w in sizes)
    return inputs, labels, text, tokens


def time_step(model, optimizer, batch) -> float:
    inputs, labels, text, _ = batch
    start = time.perf_counter()
    model(inputs, text, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def stage_one_section(repeats: int = 5, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = VideoARConfig(**SIZE, scale_schedule=list(SCHEDULE), frame_mask_prob=0.0)
    model = VideoARTransformer(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = {
        "video": make_batch(config, VIDEO_BATCH, LATENT_FRAMES),
        "image, video batch size": make_batch(config, VIDEO_BATCH, 1),
        "image, batched apart": make_batch(config, VIDEO_BATCH * LATENT_FRAMES, 1),
    }
    for batch in batches.values():  # warm-up
        time_step(model, optimizer, batch)
    seconds = {name: [] for name in batches}
    for _ in range(repeats):  # interleaved, so load on the machine hits every kind alike
        for name, batch in batches.items():
            seconds[name].append(time_step(model, optimizer, batch))
    per_step = {name: statistics.median(values) for name, values in seconds.items()}
    tokens = {name: batch[3] for name, batch in batches.items()}

    def stage(image_kind: str) -> dict:
        # a stage of 1000 steps: 30 % image steps, 70 % video steps
        steps = {"video": 1 - IMAGE_RATIO, image_kind: IMAGE_RATIO}
        total_tokens = sum(share * tokens[name] for name, share in steps.items())
        total_seconds = sum(share * per_step[name] for name, share in steps.items())
        return {"tokens_per_second": total_tokens / total_seconds, "images_per_second_in_image_steps":
                tokens[image_kind] // sum(h * w for h, w in get_scale_sizes(SCHEDULE, 8, 8)) / per_step[image_kind]}  # fmt: skip

    same, apart = stage("image, video batch size"), stage("image, batched apart")
    return {
        "setup": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M transformer, 128x128, {LATENT_FRAMES} "
                 f"latent frames per clip, video batch {VIDEO_BATCH}, image_ratio {IMAGE_RATIO}",
        "seconds_per_step": per_step,
        "tokens_per_step": tokens,
        "same_batch": same,
        "batched_apart": apart,
        "stage_tokens_per_second_ratio": apart["tokens_per_second"] / same["tokens_per_second"],
        "image_throughput_ratio": apart["images_per_second_in_image_steps"] / same["images_per_second_in_image_steps"],
    }  # fmt: skip


def markdown(result: dict) -> str:
    rows = "\n".join(
        f"| {name} | {result['tokens_per_step'][name]} | {seconds:.3f} | {result['tokens_per_step'][name] / seconds:,.0f} |"
        for name, seconds in result["seconds_per_step"].items()
    )
    return f"""Stage I batching ({result['setup']}; forward, backward and AdamW on CPU)

| step | tokens | seconds | tokens/s |
|---|---|---|---|
{rows}

Over a stage I mix: {result['same_batch']['tokens_per_second']:,.0f} tokens/s with images at the video batch size,
{result['batched_apart']['tokens_per_second']:,.0f} batched apart: **{result['stage_tokens_per_second_ratio']:.2f}x**;
images per second in image steps: **{result['image_throughput_ratio']:.2f}x**.
"""


if __name__ == "__main__":
    result = stage_one_section()
    out = Path(__file__).parent / "results"
    (out / "stage_one_batching.json").write_text(json.dumps(result, indent=2))
    (out / "stage_one_batching.md").write_text(markdown(result))
    print(markdown(result))
