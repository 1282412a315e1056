"""The benchmark suite: forward passes, speed against a next-token AR decode, growth with the video's length, the
tokenizer's throughput, the share of the machine's matmul peak, the levers (attention kernel, dtype, compile), and
the training loader's clips per second (`loader.py`).

    python benchmarks/run.py [--output-dir benchmarks/results] [--runs 3]

Every number is measured in this process, in this run; speed targets are ratios against baselines run beside them,
because this machine is shared and noisy. Weights are random: speed does not depend on them. Writes
`results.json`, `results.md` (a table with PASS/FAIL per target) and `growth.png`.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from attention import attention_section  # noqa: E402
from frame_bands import frame_bands_section  # noqa: E402
from loader import loader_section  # noqa: E402
from stage_one_batching import stage_one_section  # noqa: E402
from memory_modes import memory_modes_section, peak_rss_mb  # noqa: E402
from next_token_baseline import next_token_generate  # noqa: E402

from videoar_hf import VideoARConfig, VideoARPipeline, VideoARTokenizer, VideoARTransformer  # noqa: E402
from videoar_hf import pipeline_videoar  # noqa: E402
from videoar_hf.testing_utils import tiny_text_encoder  # noqa: E402

PROMPT = "a red circle moving left"
# the shipped VideoAR-Shapes model's shapes (model_cards/videoar-shapes.md)
SHIPPED_TOKENIZER = dict(
    latent_channels=32, base_channels=16, channel_multipliers=(1, 2, 4, 4), num_res_blocks=1,
    spatial_compression_ratio=8, temporal_compression_ratio=4, scale_schedule=(1, 2, 4, 8), norm_num_groups=8,
    sample_size=64,
)  # fmt: skip
SIZES = {
    "shipped": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4),  # 4.3M
    "mid": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),  # about 100M
}
# docs/method.md §9: 17 frames at 128x128, tokenizer x4 / x16 -> 5 x 8 x 8 latents, 6 scales
UCF_TOKENIZER = dict(
    latent_channels=16, base_channels=8, channel_multipliers=(1, 1, 1, 1, 1), num_res_blocks=1,
    spatial_compression_ratio=16, temporal_compression_ratio=4, scale_schedule=(1, 2, 3, 4, 6, 8), norm_num_groups=4,
    sample_size=128,
)  # fmt: skip
TARGETS = {
    "steps_ucf": 10.0,  # fewer forward passes than next-token AR
    "speed_shipped": 5.0,  # faster than next-token AR
    "speed_mid": 10.0,
    "diffusion": 5.0,  # faster than 50-step Wan
    "peak_share_mid": 0.30,  # of the fp32 matmul peak
    "growth_time": 1.5,  # per-frame time, 129 frames over 17, with the window (at most)
    "growth_memory": 1.2,  # peak memory, 129 frames over 17, with the window (at most)
    "reencode_time": 1.2,  # per-frame time, 257 frames over 17, re-encoding past 17 frames (at most)
    "reencode_memory": 1.2,  # peak memory, 257 frames over 17, re-encoding past 17 frames (at most)
    "shipped_seconds": 2.0,  # one 17x64x64 video (at most)
    "int8_weights": 2.0,  # transformer weights, fp32 over int8 weight-only (at least)
    "mask_build_peak": 1.2,  # dense block-causal mask at 20k tokens: peak of building it over its size (at most)
    "block_mask_bytes": 1000.0,  # 20k tokens: dense fp32 mask bytes over the BlockMask's (at least)
    "loader_1080p": 1.5,  # training clips/s from 1080p, reduced-size decode over full-size (at least)
    "loader_psnr": 35.0,  # dB between the two paths' clips (at least)
}


def random_pipeline(tokenizer_config: dict, transformer_fields: dict, seed: int = 0) -> VideoARPipeline:
    torch.manual_seed(seed)
    tokenizer = VideoARTokenizer(**tokenizer_config).eval()
    config = VideoARConfig(
        **transformer_fields, latent_bits=tokenizer_config["latent_channels"],
        scale_schedule=list(tokenizer_config["scale_schedule"]), text_hidden_size=64,
    )  # fmt: skip
    transformer = VideoARTransformer(config).eval()
    text_encoder, text_tokenizer = tiny_text_encoder(hidden_size=64)
    pipe = VideoARPipeline(
        video_tokenizer=tokenizer, transformer=transformer, text_encoder=text_encoder, tokenizer=text_tokenizer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def videoar_call(pipe, num_frames=17, size=None, **kwargs):
    size = size or pipe.video_tokenizer.config.sample_size
    return lambda: pipe(
        PROMPT, num_frames=num_frames, height=size, width=size, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs,
    )  # fmt: skip


def count_steps(pipe) -> list:
    calls = []
    pipe.transformer.layers[0].register_forward_hook(lambda *_: calls.append(1))
    return calls


# ---------------------------------------------------------------- sections


def steps_section() -> dict:
    """Forward passes per video, counted with a hook on the first layer."""
    out = {}
    for name, tokenizer_config, num_frames in (("shipped", SHIPPED_TOKENIZER, 17), ("ucf101", UCF_TOKENIZER, 17)):
        pipe = random_pipeline(tokenizer_config, dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2))
        calls = count_steps(pipe)
        videoar_call(pipe, num_frames)()
        videoar_passes = len(calls)
        calls.clear()
        size = tokenizer_config["sample_size"]
        _, next_token_passes = next_token_generate(pipe, PROMPT, num_frames, size, size)
        assert len(calls) == next_token_passes
        out[name] = dict(videoar=videoar_passes, next_token=next_token_passes, ratio=next_token_passes / videoar_passes)
    return out


def speed_section(runs: int) -> dict:
    """Seconds per 17-frame video: VideoARPipeline against a next-token decode with the same transformer."""
    out = {}
    for name, fields in SIZES.items():
        pipe = random_pipeline(SHIPPED_TOKENIZER, fields)
        videoar_s = median_seconds(videoar_call(pipe), runs)
        next_token_s = median_seconds(lambda: next_token_generate(pipe, PROMPT, 17, 64, 64), max(1, runs // 2))
        params = sum(p.numel() for p in pipe.transformer.parameters())
        out[name] = dict(params_m=params / 1e6, videoar_s=videoar_s, next_token_s=next_token_s,
                         ratio=next_token_s / videoar_s)  # fmt: skip
    return out


def wan_pipeline(hidden_size: int, num_attention_heads: int, num_params: int):
    """diffusers' `WanPipeline` with a random `WanTransformer3DModel` of this width and the depth whose parameter
    count comes nearest `num_params`, a small `AutoencoderKLWan` (base 16, like our tokenizer) and a small UMT5."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    def transformer(num_layers):
        torch.manual_seed(0)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=num_attention_heads,
            attention_head_dim=hidden_size // num_attention_heads, in_channels=16, out_channels=16, text_dim=64,
            ffn_dim=4 * hidden_size, num_layers=num_layers,
        ).eval()  # fmt: skip

    one, two = (sum(p.numel() for p in transformer(n).parameters()) for n in (1, 2))
    num_layers = max(1, round((num_params - one) / (two - one)) + 1)
    _, tokenizer = tiny_text_encoder(hidden_size=64)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=tokenizer.vocab_size, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2)
    ).eval()
    vae = AutoencoderKLWan(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer(num_layers),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusion_section(runs: int) -> dict:
    """Seconds per 17x64x64 video: VideoARPipeline against diffusers' WanPipeline at the same transformer size,
    50 steps with classifier-free guidance (what a user would pick instead)."""
    out = {}
    for name, fields in SIZES.items():
        videoar = random_pipeline(SHIPPED_TOKENIZER, fields)
        params = sum(p.numel() for p in videoar.transformer.parameters())
        wan = wan_pipeline(fields["hidden_size"], fields["num_attention_heads"], params)
        wan_call = lambda: wan(  # noqa: E731
            PROMPT, num_frames=17, height=64, width=64, num_inference_steps=50, guidance_scale=5.0,
            max_sequence_length=64, output_type="pt", generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        videoar_s = median_seconds(videoar_call(videoar), runs)
        wan_s = median_seconds(wan_call, 1)
        out[name] = dict(videoar_params_m=params / 1e6,
                         wan_params_m=sum(p.numel() for p in wan.transformer.parameters()) / 1e6,
                         videoar_s=videoar_s, wan_s=wan_s, ratio=wan_s / videoar_s)  # fmt: skip
    return out


def matmul_peak(dtype: torch.dtype, n: int = 2048, runs: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs)


@contextlib.contextmanager
def timed(obj, name: str, totals: dict, key: str):
    """Add the seconds spent in `obj.name(...)` to `totals[key]` while inside."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    with mock.patch.object(obj, name, wrapper):  # restores instances, classes and modules alike
        yield


def transformer_flops(pipe, num_frames: int = 17) -> float:
    """FLOPs of the transformer's passes for one video with CFG: 2 per multiply-add of every linear layer, plus the
    attention scores and their weighted sum over the tokens each query sees."""
    config = pipe.transformer.config
    f = pipe.video_tokenizer.config.spatial_compression_ratio
    size = pipe.video_tokenizer.config.sample_size // f
    layer_params = sum(p.numel() for p in pipe.transformer.layers[0].parameters() if p.ndim == 2)
    text_tokens = len(pipe.tokenizer(PROMPT).input_ids)
    seen, tokens = text_tokens, text_tokens
    attention = 0.0
    for _ in range(pipe.video_tokenizer.num_latent_frames(num_frames)):
        for h, w in pipe.transformer.scale_sizes(size, size):
            seen += h * w
            tokens += h * w
            attention += 4 * h * w * seen * config.hidden_size
    per_sample = config.num_hidden_layers * (2 * layer_params * tokens + attention)
    per_sample += 2 * (tokens - text_tokens) * config.hidden_size * config.latent_bits  # the bit head
    return 2 * per_sample  # the conditional and unconditional halves


def peak_section(runs: int) -> dict:
    """Achieved FLOP/s of the mid-size transformer while sampling, against this machine's matmul peak, and where a
    video's time goes."""
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    pipe = random_pipeline(SHIPPED_TOKENIZER, SIZES["mid"])
    call = videoar_call(pipe)
    call()
    totals: dict = {}
    with (
        timed(pipe.transformer, "forward", totals, "transformer"),
        timed(pipeline_videoar, "sample_bits", totals, "sampling"),
        timed(pipe.video_tokenizer, "decode", totals, "tokenizer_decode"),
        timed(pipe, "encode_prompt", totals, "text_encoder"),
    ):
        start = time.perf_counter()
        for _ in range(runs):
            call()
        total = (time.perf_counter() - start) / runs
    split = {k: v / runs for k, v in totals.items()}
    split["other (python, cache, mask)"] = total - sum(split.values())
    achieved = transformer_flops(pipe) / split["transformer"]
    return dict(
        matmul_peak_gflops={k: v / 1e9 for k, v in peaks.items()},
        transformer_gflops=achieved / 1e9,
        share_of_fp32_peak=achieved / peaks["fp32"],
        seconds_per_video=total,
        split_seconds=split,
    )


# how each growth mode samples: the frame window at inference (the KV cache drops older frames), or frame
# re-encoding past the trained length (`max_latent_frames`: 5 latent frames, a 17-frame clip)
GROWTH_MODES = {"full": dict(), "window": dict(frame_mask_window=2), "reencode": dict(max_latent_frames=5)}


def growth_pipeline(mode: str):
    pipe = random_pipeline(SHIPPED_TOKENIZER, SIZES["shipped"])
    for field, value in GROWTH_MODES[mode].items():
        setattr(pipe.transformer.config, field, value)
    return pipe


def _peak_memory_child(mode, num_frames, connection) -> None:
    """In a fresh process: build the pipeline, then report how far one generation lifts the resident memory."""
    torch.set_num_threads(1)
    pipe = growth_pipeline(mode)
    with peak_rss_mb() as peak:
        generate(pipe, num_frames, streamed=mode != "full")
    connection.send(peak["mb"])


def generate(pipe, num_frames: int, streamed: bool) -> None:
    """Full context: one `__call__`. Otherwise `stream`, each chunk dropped once seen, as when writing a file as it
    comes; with the KV cache bounded too, nothing then grows with the video but its latents (kilobytes)."""
    if not streamed:
        videoar_call(pipe, num_frames)()
        return
    for _ in pipe.stream(PROMPT, num_frames=num_frames, guidance_scale=3.0, generator=torch.Generator().manual_seed(0)):
        pass


def peak_memory_mb(mode, num_frames) -> float:
    """Peak memory of one generation, measured in its own process: within one process freed memory is reused and
    later runs would look free."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_peak_memory_child, args=(mode, num_frames, child))
    process.start()
    result = parent.recv()
    process.join()
    return result


def growth_section(frame_counts=(17, 33, 65, 129), long_frame_counts=(17, 33, 65, 129, 257)) -> dict:
    """Time per frame and peak memory against the number of frames: with full context, with a window of 2 past latent
    frames and streamed output, and with frame re-encoding past 17 frames (streamed, up to 257 frames)."""
    out = {}
    for mode in GROWTH_MODES:
        pipe, rows = growth_pipeline(mode), []
        for num_frames in long_frame_counts if mode == "reencode" else frame_counts:
            seconds = median_seconds(lambda: generate(pipe, num_frames, streamed=mode != "full"), 1)
            rows.append(dict(frames=num_frames, seconds=seconds, seconds_per_frame=seconds / num_frames,
                             peak_mb=peak_memory_mb(mode, num_frames)))  # fmt: skip
        out[mode] = rows
    return out


def tokenizer_section(runs: int) -> dict:
    """Frames per second of the shipped-size tokenizer on a 17x64x64 clip: encoding, one-shot decoding, and causal
    decoding one latent frame at a time (what streaming does)."""
    tokenizer = VideoARTokenizer(**SHIPPED_TOKENIZER).eval()
    video = torch.rand(1, 3, 17, 64, 64) * 2 - 1
    with torch.inference_mode():
        features = tokenizer.quantize(tokenizer.encode(video).latents).features
        seconds = {
            "encode": median_seconds(lambda: tokenizer.encode(video), runs),
            "decode_one_shot": median_seconds(lambda: tokenizer.decode(features), runs),
            "decode_chunked": median_seconds(lambda: tokenizer.decode(features, chunk_size=1), runs),
        }
    return {k: 17 / v for k, v in seconds.items()}


def levers_section(runs: int) -> dict:
    """Seconds per 17-frame video at the mid size: SDPA against eager attention, bf16 against fp32, and
    torch.compile of the transformer's layers."""
    out = {}
    pipe = random_pipeline(SHIPPED_TOKENIZER, SIZES["mid"])
    out["sdpa_fp32"] = median_seconds(videoar_call(pipe), runs)
    pipe.transformer.set_attn_implementation("eager")
    out["eager_fp32"] = median_seconds(videoar_call(pipe), runs)
    pipe.transformer.set_attn_implementation("sdpa")
    pipe.to(dtype=torch.bfloat16)
    out["sdpa_bf16"] = median_seconds(videoar_call(pipe), runs)
    pipe.to(dtype=torch.float32)
    try:
        for layer in pipe.transformer.layers:
            layer.compile(dynamic=True)
        out["sdpa_fp32_compiled"] = median_seconds(videoar_call(pipe), runs)
    except Exception as error:  # no compiler toolchain, or an op inductor cannot take
        out["sdpa_fp32_compiled"] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    return out


def shipped_speed_section(runs: int) -> dict:
    from videoar_hf import shipped_model_path

    pipe = VideoARPipeline.from_pretrained(shipped_model_path())
    pipe.set_progress_bar_config(disable=True)
    return {"seconds_per_video": median_seconds(videoar_call(pipe), runs)}


# ---------------------------------------------------------------- report


def verdicts(results: dict) -> list[tuple[str, str, str, bool]]:
    """(line, measured, target, passed) per target."""
    lines = []

    def add(name, value, target, at_least, unit="x"):
        passed = value >= target if at_least else value <= target
        lines.append((name, f"{value:.2f}{unit}", f"{'>=' if at_least else '<='} {target}{unit}", passed))

    add("steps, UCF-101 setting: next-token / VideoAR passes", results["steps"]["ucf101"]["ratio"],
        TARGETS["steps_ucf"], True)  # fmt: skip
    add("speed vs next-token AR, shipped size", results["speed"]["shipped"]["ratio"], TARGETS["speed_shipped"], True)
    add("speed vs next-token AR, ~100M", results["speed"]["mid"]["ratio"], TARGETS["speed_mid"], True)
    for size in ("shipped", "mid"):
        add(f"speed vs 50-step Wan diffusion, {size} size", results["diffusion"][size]["ratio"], TARGETS["diffusion"],
            True)  # fmt: skip
    add("transformer share of fp32 matmul peak, ~100M", results["peak"]["share_of_fp32_peak"],
        TARGETS["peak_share_mid"], True, unit="")  # fmt: skip
    window = results["growth"]["window"]
    add("growth with window: time per frame 129 / 17", window[-1]["seconds_per_frame"] / window[0]["seconds_per_frame"],
        TARGETS["growth_time"], False)  # fmt: skip
    add("growth with window: peak memory 129 / 17", max(window[-1]["peak_mb"], 1) / max(window[0]["peak_mb"], 1),
        TARGETS["growth_memory"], False)  # fmt: skip
    if "reencode" in results["growth"]:
        reencode = results["growth"]["reencode"]
        add("re-encoding: time per frame 257 / 17", reencode[-1]["seconds_per_frame"] / reencode[0]["seconds_per_frame"],
            TARGETS["reencode_time"], False)  # fmt: skip
        add("re-encoding: peak memory 257 / 17", max(reencode[-1]["peak_mb"], 1) / max(reencode[0]["peak_mb"], 1),
            TARGETS["reencode_memory"], False)  # fmt: skip
    add("shipped model: seconds per 17x64x64 video", results["shipped"]["seconds_per_video"],
        TARGETS["shipped_seconds"], False, unit=" s")  # fmt: skip
    if "memory" in results:
        memory = results["memory"]
        add("int8 weight-only: transformer weights fp32 / int8, ~100M",
            memory["plain"]["transformer_weights_mb"] / memory["int8_weight_only"]["transformer_weights_mb"],
            TARGETS["int8_weights"], True)  # fmt: skip
        offloads = [mode for mode in memory if "offload" in mode]
        add("offload modes with frames identical to plain", sum(memory[m]["identical_to_plain"] for m in offloads),
            len(offloads), True, unit="")  # fmt: skip
    if "loader" in results:
        loader = results["loader"]
        add("loader: clips/s from 1080p, reduced-size / full-size decode", loader["1080p"]["ratio"],
            TARGETS["loader_1080p"], True)  # fmt: skip
        add("loader: PSNR between the two paths (min)", min(r["psnr_db_min"] for r in loader.values()),
            TARGETS["loader_psnr"], True, unit=" dB")  # fmt: skip
    if "attention" in results and "20k" in results["attention"]["mask"]:
        mask = results["attention"]["mask"]["20k"]
        add("dense mask, 20k tokens: peak of building / its size", mask["dense_fp32"]["peak_mb"] /
            mask["dense_fp32"]["mask_mb"], TARGETS["mask_build_peak"], False)  # fmt: skip
        ratio = mask["dense_fp32"]["mask_mb"] / mask["block_mask"]["mask_mb"]
        add("20k tokens: dense fp32 mask / BlockMask bytes", ratio, TARGETS["block_mask_bytes"], True)
    return lines


def attention_line(attention: dict) -> str:
    speed = ", ".join(f"{r['tokens']:,} tokens {r['flex_over_sdpa_forward_speed']:.2f}x"
                      for r in attention["layer_speed"].values())  # fmt: skip
    build = ", ".join(f"{r['tokens']:,} tokens {r['legacy_fp32']['peak_mb']:.0f} -> {r['dense_fp32']['peak_mb']:.0f} MB"
                      for r in attention["mask"].values())  # fmt: skip
    fits = attention["videoar_l"]["projection"]["33x384x672"]
    totals = ", ".join(f"{k} {v['total_gb']:.0f} GB" for k, v in fits.items() if "+" in k)  # activations+mask
    return (f"Attention (benchmarks/attention.py, one narrow layer): flex / SDPA forward speed {speed}; peak of "
            f"building the dense fp32 mask, before -> after: {build}; VideoAR-L at 33x384x672 on 80 GB (bf16, Adam): "
            f"{totals}.")  # fmt: skip


def markdown(results: dict) -> str:
    rows = ["| target | measured | needed | result |", "|---|---|---|---|"]
    rows += [f"| {n} | {m} | {t} | {'PASS' if ok else 'FAIL'} |" for n, m, t, ok in verdicts(results)]
    speed = results["speed"]
    detail = [
        f"Steps: shipped {results['steps']['shipped']['videoar']} vs {results['steps']['shipped']['next_token']}, "
        f"UCF-101 setting {results['steps']['ucf101']['videoar']} vs {results['steps']['ucf101']['next_token']}.",
        *(f"Speed, {k} ({v['params_m']:.1f}M): VideoAR {v['videoar_s']:.2f} s, next-token {v['next_token_s']:.2f} s."
          for k, v in speed.items()),  # fmt: skip
        *(f"Diffusion, {k}: VideoAR ({v['videoar_params_m']:.1f}M) {v['videoar_s']:.2f} s, WanPipeline "
          f"({v['wan_params_m']:.1f}M, 50 steps, CFG) {v['wan_s']:.2f} s." for k, v in results["diffusion"].items()),
        "Time split at ~100M (s per video): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["peak"]["split_seconds"].items())
        + f"; matmul peak fp32 {results['peak']['matmul_peak_gflops']['fp32']:.0f} GFLOP/s, bf16 "
        f"{results['peak']['matmul_peak_gflops']['bf16']:.0f}; transformer {results['peak']['transformer_gflops']:.1f}.",
        "Tokenizer (frames/s, 17x64x64): " + ", ".join(f"{k} {v:.0f}" for k, v in results["tokenizer"].items()) + ".",
        "Levers at ~100M (s per video): "
        + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in results["levers"].items())
        + ".",
        *([] if "memory" not in results else ["Memory modes at ~100M (transformer weights MB / peak RSS MB / s per "
          "video / frames identical to plain): " + "; ".join(
            f"{k} {v['transformer_weights_mb']:.0f} / {v['peak_mb']:.0f} / {v['seconds_per_video']:.2f} / "
            f"{'yes' if v['identical_to_plain'] else 'no'}" for k, v in results["memory"].items())]),  # fmt: skip
        *([] if "loader" not in results else ["Loader (clips/s, full-size / reduced-size decode, 17 frames at 8 fps "
          "to 128x128, one torch thread): " + "; ".join(
            f"{k} {v['full_size_clips_per_s']:.2f} / {v['reduced_size_clips_per_s']:.2f}"
            for k, v in results["loader"].items())]),  # fmt: skip
        *([] if "attention" not in results else [attention_line(results["attention"])]),
        f"Machine: {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
    ]
    return "\n".join(rows + [""] + [f"- {line}" for line in detail]) + "\n"


def plot_growth(growth: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    for mode, rows in growth.items():
        frames = [r["frames"] for r in rows]
        ax_time.plot(frames, [1000 * r["seconds_per_frame"] for r in rows], "o-", label=mode)
        ax_memory.plot(frames, [r["peak_mb"] for r in rows], "o-", label=mode)
    ax_time.set(xlabel="frames", ylabel="ms per frame", title="time per frame")
    ax_memory.set(xlabel="frames", ylabel="peak RSS added by one video (MB)", title="peak memory")
    for ax in (ax_time, ax_memory):
        ax.set_xscale("log", base=2)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per measurement (the median is kept).")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}.")
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, section in (
        ("steps", steps_section),
        ("speed", lambda: speed_section(args.runs)),
        ("shipped", lambda: shipped_speed_section(args.runs)),
        ("diffusion", lambda: diffusion_section(args.runs)),
        ("tokenizer", lambda: tokenizer_section(args.runs)),
        ("growth", growth_section),
        ("peak", lambda: peak_section(args.runs)),
        ("levers", lambda: levers_section(args.runs)),
        ("memory", lambda: memory_modes_section(random_pipeline(SHIPPED_TOKENIZER, SIZES["mid"]), args.runs)),
        ("attention", lambda: attention_section(args.runs)),
        ("loader", loader_section),
        ("stage_one", lambda: stage_one_section(repeats=max(3, args.runs))),
        ("frame_bands", lambda: frame_bands_section(repeats=max(3, args.runs))),
    ):
        start = time.perf_counter()
        results[name] = section()
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "results.md").write_text(markdown(results))
    plot_growth(results["growth"], output / "growth.png")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
