"""Block-sparse attention: the dense block-causal mask (SDPA) against flex attention's BlockMask, and whether
VideoAR-L trains on one 80 GB GPU.

    python benchmarks/attention.py [--output-dir benchmarks/results] [--runs 3] [--lengths 2k 8k 20k]

- **Mask memory.** The dense mask's bytes and the peak of building it, before this change (the builder is copied
  below as `legacy_additive_mask`) and after, against the BlockMask's bytes; each build in its own process (resident
  memory, sampled every millisecond). And what SDPA keeps for the backward given a boolean or an additive mask.
- **One layer.** Forward and training (forward + backward) time of one decoder layer, SDPA with the dense mask
  against flex attention (compiled; forward only: torch has no flex backward on CPU), at sequence lengths of about
  2k, 8k and 20k tokens laid out as 384x672 video (24x42 latents, 1, 3 and 8 latent frames). To stay affordable on a
  2-core CPU the layer is narrow: 2 heads of L's head dimension (128), width 256; the attention's share of the time
  is larger than in a full-width layer. Peak memory of each, in its own process.
- **Sampling.** One cached sampling step at 20k tokens of context, and a whole cached video, SDPA against flex.
- **VideoAR-L.** Activation bytes per token per layer at L's width (bf16, counted with saved-tensor hooks at two
  small lengths), with and without gradient checkpointing, projected with the mask to 17x128x128 and 33x384x672.

Speed figures are ratios within this process (the machine is shared and noisy). Writes `attention.json` and
`attention.md`.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory_modes import peak_rss_mb  # noqa: E402

from videoar_hf import VideoARConfig  # noqa: E402
from videoar_hf.attention_mask import TEXT_BLOCK, BlockCausalRule  # noqa: E402
from videoar_hf.modeling_videoar import VideoARDecoderLayer  # noqa: E402
from videoar_hf.rope import MultiScaleTemporalRoPE  # noqa: E402
from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes  # noqa: E402

GIB = 2**30
TEXT_TOKENS = 128  # assumed prompt length (padded); the paper does not give its text encoder (docs/method.md §3)
# the L preset's schedule; 33x384x672 needs its longer latent side, 672 / 16 = 42, in the schedule too
SCHEDULE = (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32, 42)
GRID_384x672 = (24, 42)
LENGTHS = {"2k": 1, "8k": 3, "20k": 8}  # latent frames of 24x42 latents: 2,638, 7,658 and 20,208 tokens
SPEED_LAYER = dict(hidden_size=256, num_attention_heads=2)  # L's head dim (128), 2 heads
GPU_BYTES = 80e9


# ---------------------------------------------------------------- layouts and layers


def layout_rule(num_frames: int, grid=GRID_384x672, schedule=SCHEDULE, batch: int = 1) -> BlockCausalRule:
    """The rule of a teacher-forced pass: `TEXT_TOKENS` text tokens, then `num_frames` latent frames of `grid`."""
    sizes = get_scale_sizes(schedule, *grid)
    coords = TokenLayout(num_frames, tuple(sizes)).token_coords()
    text = torch.full((TEXT_TOKENS,), TEXT_BLOCK)
    blocks = torch.cat([text, coords[:, 0] * len(sizes) + coords[:, 1]])
    frames = torch.cat([text, coords[:, 0]])
    valid = torch.ones(batch, len(blocks), dtype=torch.bool)
    return BlockCausalRule(blocks, frames, blocks, frames, valid)


def legacy_additive_mask(rule: BlockCausalRule, dtype: torch.dtype) -> torch.Tensor:
    """The builder before this change (`block_causal_mask` then `to_additive_mask`), for the before/after figures:
    full-size boolean intermediates, then a zero tensor and an out-of-place `masked_fill`."""
    q_blocks, k_blocks, k_valid = rule.query_blocks_N, rule.key_blocks_M, rule.key_valid_BM
    visible = ((k_blocks[None, :] <= q_blocks[:, None])[None] & k_valid[:, None, :])[:, None]
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


def make_layer(implementation: str, **fields) -> tuple[VideoARDecoderLayer, MultiScaleTemporalRoPE]:
    config = VideoARConfig.from_preset("L", **fields)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return VideoARDecoderLayer(config, 0), MultiScaleTemporalRoPE(config.rope_axes_dim, config.rope_theta)


def layer_inputs(layer, rope, rule: BlockCausalRule, implementation: str, dtype=torch.float32):
    B, N, _ = rule.shape
    x_BNC = torch.randn(B, N, layer.self_attn.config.hidden_size, dtype=dtype)
    position_ids_BN3 = torch.arange(N, dtype=torch.float32)[None, :, None].expand(B, N, 3)
    mask = rule.block_mask() if implementation == "flex_attention" else rule.dense(dtype)
    return x_BNC, rope(position_ids_BN3, dtype), mask


def in_process(target, *args):
    """`target(*args)` in a fresh process: peak memory within one process is hidden by memory freed earlier."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(target, args, child))
    process.start()
    if not parent.poll(timeout=1800):
        process.kill()
        raise RuntimeError(f"{target.__name__}{args}: no result (exit code {process.exitcode}).")
    result = parent.recv()
    process.join()
    if isinstance(result, BaseException):
        raise result
    return result


def _child(target, args, connection) -> None:
    try:
        connection.send(target(*args))
    except Exception as error:  # sent back and raised in the parent
        connection.send(RuntimeError(f"{type(error).__name__}: {error}"))


# ---------------------------------------------------------------- mask memory


def _mask_build_peak(num_frames: int, builder: str) -> dict:
    rule = layout_rule(num_frames)
    build = {
        "legacy_fp32": lambda: legacy_additive_mask(rule, torch.float32),
        "dense_fp32": lambda: rule.dense(torch.float32),
        "dense_bool": lambda: rule.dense(torch.bool),
        "block_mask": rule.block_mask,
    }[builder]
    with peak_rss_mb() as peak:
        start = time.perf_counter()
        mask = build()
        seconds = time.perf_counter() - start
    if builder == "block_mask":
        nbytes = sum(t.numel() * t.element_size() for t in mask.as_tuple() if torch.is_tensor(t))
    else:
        nbytes = mask.numel() * mask.element_size()
    return dict(mask_mb=nbytes / 2**20, peak_mb=peak["mb"], seconds=seconds)


def mask_section(lengths) -> dict:
    out = {}
    for name in lengths:
        T = LENGTHS[name]
        row = {"tokens": layout_rule(T).shape[1]}
        for builder in ("legacy_fp32", "dense_fp32", "dense_bool", "block_mask"):
            row[builder] = in_process(_mask_build_peak, T, builder)
        rule = layout_rule(T)
        mask = rule.block_mask()
        row["flex_tiles_computed"] = _tiles_computed(mask)
        row["visible_fraction"] = _visible_fraction(rule)
        out[name] = row
    return out


def _tiles_computed(block_mask) -> float:
    """Share of the 128x128 tiles flex attention computes (partial or full)."""
    q_tiles, kv_tiles = block_mask.kv_indices.shape[-2:]
    computed = block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()
    return computed.item() / (q_tiles * kv_tiles * block_mask.kv_num_blocks.shape[0])


def _visible_fraction(rule: BlockCausalRule) -> float:
    B, N, M = rule.shape
    return sum(rule.rows(s, min(N, s + 1024)).sum().item() for s in range(0, N, 1024)) / (B * N * M)


def _sdpa_retained(mask_form: str, num_frames: int = 3, layers: int = 4) -> dict:
    """Resident memory `layers` SDPA calls keep for their backward (small heads), sharing one mask, boolean or
    additive fp32: the outputs and the mask's copies, if any."""
    import psutil

    rule = layout_rule(num_frames)
    B, N, _ = rule.shape
    mask = rule.dense(torch.bool if mask_form == "bool" else torch.float32)
    k, v = torch.randn(B, 2, N, 32), torch.randn(B, 2, N, 32)
    queries = [torch.randn(B, 2, N, 32, requires_grad=True) for _ in range(layers)]
    before = psutil.Process().memory_info().rss
    outputs = [torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask) for q in queries]
    retained = psutil.Process().memory_info().rss - before
    return dict(mask_mb=mask.untyped_storage().nbytes() / 2**20, retained_mb=retained / 2**20,
                outputs_mb=sum(o.numel() * o.element_size() for o in outputs) / 2**20)  # fmt: skip


def sdpa_mask_form_section() -> dict:
    """Why the dense path hands SDPA an additive mask and not the 4x smaller boolean one."""
    return {form: in_process(_sdpa_retained, form) for form in ("bool", "additive_fp32")}


# ---------------------------------------------------------------- one layer


def interleaved_medians(calls: dict, runs: int) -> dict:
    """Median seconds of each call, the calls taking turns run after run: drift on a shared machine hits all alike."""
    for call in calls.values():
        call()  # warm-up: compilation, first-call allocations
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def layer_speed_section(lengths, runs: int) -> dict:
    """Seconds per pass of one narrow layer; tokens per second; flex's first call (compilation) on its own."""
    out = {}
    for name in lengths:
        rule = layout_rule(LENGTHS[name])
        N = rule.shape[1]
        row, forwards = {"tokens": N}, {}
        for implementation in ("sdpa", "flex_attention"):
            layer, rope = make_layer(implementation, **SPEED_LAYER)
            inputs = layer_inputs(layer, rope, rule, implementation)
            forwards[implementation] = lambda layer=layer, inputs=inputs: layer(*inputs)
            if implementation == "sdpa":
                x_BNC, position_embeddings, mask = inputs
                x_train = x_BNC.clone().requires_grad_()
                def train(layer=layer, x=x_train, e=position_embeddings, m=mask):
                    layer(x, e, m).sum().backward()
        with torch.no_grad():
            start = time.perf_counter()
            forwards["flex_attention"]()
            row["flex_first_call_s"] = time.perf_counter() - start
            seconds = interleaved_medians(forwards, runs)
        row["sdpa_forward_s"], row["flex_forward_s"] = seconds["sdpa"], seconds["flex_attention"]
        row["sdpa_train_s"] = interleaved_medians({"train": train}, max(1, runs - 1))["train"]
        row["flex_over_sdpa_forward_speed"] = row["sdpa_forward_s"] / row["flex_forward_s"]
        row.update({f"{k}_tokens_per_s": N / row[f"{k}_s"] for k in ("sdpa_forward", "flex_forward", "sdpa_train")})
        out[name] = row
    return out


def _layer_peak(num_frames: int, implementation: str, train: bool) -> dict:
    """Peak resident memory of building the mask and running one narrow layer (after a warm-up for flex)."""
    torch.set_num_threads(1)
    rule = layout_rule(num_frames)
    layer, rope = make_layer(implementation, **SPEED_LAYER)
    if implementation == "flex_attention":  # compile first: the compiler's own memory is not the layer's
        with torch.no_grad():
            layer(*layer_inputs(layer, rope, rule, implementation))
    with peak_rss_mb() as peak:
        x_BNC, position_embeddings, mask = layer_inputs(layer, rope, rule, implementation)
        if train:
            x_BNC.requires_grad_()
            layer(x_BNC, position_embeddings, mask).sum().backward()
        else:
            with torch.no_grad():
                layer(x_BNC, position_embeddings, mask)
    return dict(peak_mb=peak["mb"])


def layer_memory_section(lengths) -> dict:
    out = {}
    for name in lengths:
        T = LENGTHS[name]
        out[name] = {
            "sdpa_forward_mb": in_process(_layer_peak, T, "sdpa", False)["peak_mb"],
            "sdpa_train_mb": in_process(_layer_peak, T, "sdpa", True)["peak_mb"],
            "flex_forward_mb": in_process(_layer_peak, T, "flex_attention", False)["peak_mb"],
        }
    return out


# ---------------------------------------------------------------- sampling


def cached_step_section(runs: int, num_frames: int = 8) -> dict:
    """One cached sampling step of the finest 24x42 block with the 20k tokens before it as keys (attention only)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    layout = TokenLayout(num_frames, tuple(get_scale_sizes(SCHEDULE, *GRID_384x672)))
    full = layout_rule(num_frames)
    last = layout.block_slice(num_frames - 1, layout.num_scales - 1)
    q = slice(TEXT_TOKENS + last.start, TEXT_TOKENS + last.stop)
    rule = BlockCausalRule(full.query_blocks_N[q], full.query_frames_N[q], full.key_blocks_M, full.key_frames_M,
                           full.key_valid_BM)  # fmt: skip
    B, n, M = rule.shape
    layer, _ = make_layer("sdpa", **SPEED_LAYER)
    H, d = layer.self_attn.num_heads, layer.self_attn.head_dim
    q_BHnd, k_BHMd, v_BHMd = torch.randn(B, H, n, d), torch.randn(B, H, M, d), torch.randn(B, H, M, d)
    calls = {}
    for implementation in ("sdpa", "flex_attention"):
        mask = rule.block_mask() if implementation == "flex_attention" else rule.dense(torch.float32)
        attention = ALL_ATTENTION_FUNCTIONS[implementation]
        calls[implementation] = lambda attention=attention, mask=mask: attention(
            layer.self_attn, q_BHnd, k_BHMd, v_BHMd, mask, scaling=layer.self_attn.scaling
        )
    with torch.no_grad():
        seconds = interleaved_medians(calls, runs)
    return dict(queries=n, keys=M, sdpa_s=seconds["sdpa"], flex_attention_s=seconds["flex_attention"],
                flex_over_sdpa_speed=seconds["sdpa"] / seconds["flex_attention"])  # fmt: skip


def _sample_video(implementation: str, videos: int = 2) -> dict:
    """Seconds per video of cached sampling (17x64x64: 5 latent frames of the shipped schedule (1, 2, 4, 8)) with
    the shipped-size transformer, fed random inputs; the first video includes flex's compilations."""
    from videoar_hf import VideoARTransformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = VideoARConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, latent_bits=32,
                           scale_schedule=[1, 2, 4, 8], text_hidden_size=64)  # fmt: skip
    model = VideoARTransformer._from_config(config, attn_implementation=implementation).eval()
    text = torch.randn(2, 16, 64)
    seconds = []
    with torch.no_grad():
        for _ in range(videos):
            start = time.perf_counter()
            cache = model.init_cache(8, 8)
            for frame in range(5):
                for scale, (h, w) in enumerate(cache.scale_sizes):
                    x = None if (frame, scale) == (0, 0) else torch.randn(2, h, w, 32)
                    model(x, text, cache=cache)
            seconds.append(time.perf_counter() - start)
    return dict(first_video_s=seconds[0], warm_video_s=min(seconds[1:]))


def sampling_section(runs: int) -> dict:
    videos = {impl: in_process(_sample_video, impl) for impl in ("sdpa", "flex_attention")}
    return dict(
        cached_step_20k=cached_step_section(runs),
        video_17x64x64=videos,
        video_flex_over_sdpa_speed_warm=videos["sdpa"]["warm_video_s"] / videos["flex_attention"]["warm_video_s"],
    )


# ---------------------------------------------------------------- VideoAR-L


def saved_bytes_per_token(num_tokens: int, checkpointing: bool) -> float:
    """Bytes one L-shape layer keeps for its backward per token, in bf16: every tensor autograd saves, counted once
    per storage, without the weights and without the mask (one per model, shared by all layers)."""
    from torch.utils.checkpoint import checkpoint

    layer, rope = make_layer("sdpa")
    layer = layer.to(torch.bfloat16)
    zeros = torch.zeros(num_tokens, dtype=torch.long)  # one block: every pair visible (memory does not care)
    rule = BlockCausalRule(zeros, zeros, zeros, zeros, torch.ones(1, num_tokens, dtype=torch.bool))
    x_BNC, position_embeddings, mask = layer_inputs(layer, rope, rule, "sdpa", torch.bfloat16)
    x_BNC.requires_grad_()
    excluded = {p.untyped_storage().data_ptr() for p in layer.parameters()} | {mask.untyped_storage().data_ptr()}
    excluded |= {t.untyped_storage().data_ptr() for t in position_embeddings}  # shared by all layers too
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if checkpointing:  # the reentrant form saves its inputs through the hooks
            out = checkpoint(layer, x_BNC, position_embeddings, mask, use_reentrant=True)
        else:
            out = layer(x_BNC, position_embeddings, mask)
    del out
    return sum(storages.values()) / num_tokens


def videoar_l_section() -> dict:
    config = VideoARConfig.from_preset("L")
    with torch.device("meta"):
        from videoar_hf import VideoARTransformer

        params = sum(p.numel() for p in VideoARTransformer(config).parameters())
    per_token = {
        f"{mode}_{n}": saved_bytes_per_token(n, mode == "checkpointed") for mode in ("plain", "checkpointed")
        for n in (256, 1024)
    }  # fmt: skip
    plain, checkpointed = per_token["plain_1024"], per_token["checkpointed_1024"]
    layers = config.num_hidden_layers
    static = params * (2 + 2 + 8)  # bf16 weights and gradients, fp32 Adam moments
    settings = {
        "17x128x128": TokenLayout(5, tuple(get_scale_sizes(config.scale_schedule, 8, 8))).num_tokens,
        "33x384x672": TokenLayout(9, tuple(get_scale_sizes(SCHEDULE, *GRID_384x672))).num_tokens,
    }
    projection = {}
    for name, video_tokens in settings.items():
        N = video_tokens + TEXT_TOKENS
        mask = {"dense_bf16": N * N * 2, "block_mask": 0}
        activations = {
            "plain": layers * N * plain,
            # each layer keeps its input; the backward recomputes one layer at a time
            "checkpointed": layers * N * checkpointed + N * plain,
        }
        projection[name] = {"tokens": N, "mask_gb": {k: v / 1e9 for k, v in mask.items()}}
        for act_name, act in activations.items():
            for mask_name, mask_bytes in mask.items():
                per_sample = act + mask_bytes  # activations and the (B, 1, N, N) mask both grow with the batch
                projection[name][f"{act_name}+{mask_name}"] = dict(
                    total_gb=(static + per_sample) / 1e9, fits_80gb=static + per_sample <= GPU_BYTES,
                    max_batch_80gb=int((GPU_BYTES - static) // per_sample),
                )  # fmt: skip
    return dict(
        params_m=params / 1e6, static_gb=static / 1e9, bytes_per_token_per_layer=per_token,
        hidden_size=config.hidden_size, projection=projection,
    )  # fmt: skip


# ---------------------------------------------------------------- report


def attention_section(runs: int = 3, lengths=tuple(LENGTHS)) -> dict:
    return dict(
        mask=mask_section(lengths),
        sdpa_mask_form=sdpa_mask_form_section(),
        layer_speed=layer_speed_section(lengths, runs),
        layer_memory=layer_memory_section(lengths),
        sampling=sampling_section(runs),
        videoar_l=videoar_l_section(),
    )


def markdown(results: dict) -> str:
    lines = ["| tokens | dense fp32 mask MB | build peak before / after MB | BlockMask KB (tiles computed) | "
             "SDPA fwd s | flex fwd s | flex / SDPA fwd speed | SDPA train tok/s | peak MB: SDPA fwd / train / "
             "flex fwd |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, mask in results["mask"].items():
        speed, memory = results["layer_speed"][name], results["layer_memory"][name]
        lines.append(
            f"| {mask['tokens']:,} | {mask['dense_fp32']['mask_mb']:.0f} | {mask['legacy_fp32']['peak_mb']:.0f} / "
            f"{mask['dense_fp32']['peak_mb']:.0f} | {1024 * mask['block_mask']['mask_mb']:.0f} "
            f"({100 * mask['flex_tiles_computed']:.0f} %) | {speed['sdpa_forward_s']:.2f} | "
            f"{speed['flex_forward_s']:.2f} | {speed['flex_over_sdpa_forward_speed']:.2f}x | "
            f"{speed['sdpa_train_tokens_per_s']:.0f} | {memory['sdpa_forward_mb']:.0f} / {memory['sdpa_train_mb']:.0f} "
            f"/ {memory['flex_forward_mb']:.0f} |"
        )
    sampling, l_preset = results["sampling"], results["videoar_l"]
    step, video = sampling["cached_step_20k"], sampling["video_17x64x64"]
    form = results["sdpa_mask_form"]
    lines += [
        "",
        f"- 4 SDPA calls with grad sharing one mask keep {form['bool']['retained_mb']:.0f} MB with the boolean mask "
        f"({form['bool']['mask_mb']:.0f} MB) and {form['additive_fp32']['retained_mb']:.0f} MB with the additive fp32 "
        f"one ({form['additive_fp32']['mask_mb']:.0f} MB); their outputs are {form['bool']['outputs_mb']:.0f} MB.",
        f"- Cached sampling step, {step['queries']} queries against {step['keys']:,} keys: "
        f"SDPA {step['sdpa_s']:.3f} s, "
        f"flex {step['flex_attention_s']:.3f} s ({step['flex_over_sdpa_speed']:.2f}x).",
        f"- Cached sampling of a 17x64x64 video (shipped size, 20 steps): SDPA {video['sdpa']['warm_video_s']:.2f} s; "
        f"flex {video['flex_attention']['warm_video_s']:.2f} s warm, {video['flex_attention']['first_video_s']:.1f} s "
        f"for the first video (compilation).",
        f"- VideoAR-L ({l_preset['params_m']:.0f}M, width {l_preset['hidden_size']}): bf16 bytes kept per token per "
        "layer, plain / checkpointed: "
        + ", ".join(f"N={n}: {l_preset['bytes_per_token_per_layer'][f'plain_{n}'] / 1024:.1f} / "
                    f"{l_preset['bytes_per_token_per_layer'][f'checkpointed_{n}'] / 1024:.1f} KiB" for n in (256, 1024))
        + f"; weights, gradients and Adam {l_preset['static_gb']:.1f} GB.",
    ]  # fmt: skip
    for name, row in l_preset["projection"].items():
        cells = ", ".join(
            f"{k} {v['total_gb']:.0f} GB ({'fits' if v['fits_80gb'] else 'does not fit'}; "
            f"batch <= {v['max_batch_80gb']})"
            for k, v in row.items() if isinstance(v, dict) and "total_gb" in v
        )  # fmt: skip
        lines.append(f"- VideoAR-L at {name} ({row['tokens']:,} tokens) on 80 GB, batch 1: {cells}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per measurement (the median is kept).")
    parser.add_argument("--lengths", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    args = parser.parse_args(argv)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results = attention_section(args.runs, args.lengths)
    results["machine"] = dict(cpus=multiprocessing.cpu_count(), threads=torch.get_num_threads(),
                              torch=torch.__version__)  # fmt: skip
    (output / "attention.json").write_text(json.dumps(results, indent=2))
    (output / "attention.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
