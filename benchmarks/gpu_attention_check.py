"""On one CUDA GPU: flex attention (BlockMask) against SDPA with the dense block-causal mask, for one VideoAR-L layer
in bf16. Under 5 minutes on an H200; prints one compact JSON line.

    python benchmarks/gpu_attention_check.py [--lengths 8k 20k] [--budget-s 180] [--output summary.json]

- which SDPA backends accept the dense additive mask, and which one the dispatcher picks (kernel names, profiled);
- at about 8k and 20k tokens (384x672 video, 24x42 latents, 3 and 8 latent frames): forward + backward seconds and
  peak memory, SDPA against flex, and the gradients of both (equal within bf16 tolerance);
- torch.cuda.max_memory_allocated of one L layer's forward + backward at 33x384x672 (22,718 tokens), with the dense
  mask (rows aligned to 16 elements, as the model builds it, and unaligned) and with the BlockMask;
- cached sampling of a tiny model, flex against SDPA (flex compiles changing shapes on CUDA).

Every part is skipped, and says so, once `--budget-s` has run out.
"""

import argparse
import json
import sys
import time

import torch

LENGTHS = {"8k": 3, "20k": 8, "33x384x672": 9}  # latent frames of 24x42 latents
SCHEDULE = (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 24, 32, 42)  # the L preset's, and 672 / 16 = 42
TEXT_TOKENS = 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", default=["8k", "20k"], choices=["8k", "20k"])
    parser.add_argument("--budget-s", type=float, default=180.0, help="Stop starting new parts after this long.")
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per measurement (the median is kept).")
    parser.add_argument("--output", default=None, help="Also write the summary to this JSON file.")
    return parser.parse_args(argv)


def layout_rule(num_frames: int, device):
    from videoar_hf.attention_mask import TEXT_BLOCK, BlockCausalRule
    from videoar_hf.scale_schedule import TokenLayout, get_scale_sizes

    sizes = get_scale_sizes(SCHEDULE, 24, 42)
    coords = TokenLayout(num_frames, tuple(sizes)).token_coords()
    text = torch.full((TEXT_TOKENS,), TEXT_BLOCK)
    blocks = torch.cat([text, coords[:, 0] * len(sizes) + coords[:, 1]]).to(device)
    frames = torch.cat([text, coords[:, 0]]).to(device)
    valid = torch.ones(1, len(blocks), dtype=torch.bool, device=device)
    return BlockCausalRule(blocks, frames, blocks, frames, valid)


def l_layer(implementation: str, device):
    from videoar_hf import VideoARConfig
    from videoar_hf.modeling_videoar import VideoARDecoderLayer
    from videoar_hf.rope import MultiScaleTemporalRoPE

    config = VideoARConfig.from_preset("L")
    config._attn_implementation = implementation
    torch.manual_seed(0)
    layer = VideoARDecoderLayer(config, 0).to(device, torch.bfloat16)
    return layer, MultiScaleTemporalRoPE(config.rope_axes_dim, config.rope_theta)


def train_pass(implementation: str, rule, mask_form: str = "model"):
    """One forward + backward of an L layer: seconds (median), the mask's bytes and the step's peak above inputs and
    mask (a model holds one mask for all its layers), and the gradients."""
    device = rule.key_valid_BM.device
    layer, rope = l_layer(implementation, device)
    B, N, _ = rule.shape
    x = torch.randn(B, N, layer.self_attn.config.hidden_size, device=device, dtype=torch.bfloat16,
                    generator=torch.Generator(device).manual_seed(0))  # fmt: skip
    positions = torch.arange(N, device=device, dtype=torch.float32)[None, :, None].expand(B, N, 3)
    position_embeddings = rope(positions, torch.bfloat16)
    if implementation == "flex_attention":
        mask = rule.block_mask()
    elif mask_form == "unaligned":  # rows of M elements, M not a multiple of 8: SDPA pads a copy in every call
        mask = rule.dense(torch.bfloat16).contiguous()
    else:
        mask = rule.dense(torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()  # the step's peak, above the inputs and the mask

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        x.requires_grad_()
        layer(x, position_embeddings, mask).float().square().mean().backward()

    step()  # compilation, autotuning
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(ARGS.runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    grads = [x.grad.float()] + [p.grad.float() for p in layer.parameters()]
    mask_bytes = (sum(t.numel() * t.element_size() for t in mask.as_tuple() if torch.is_tensor(t))
                  if implementation == "flex_attention" else mask.untyped_storage().nbytes())  # fmt: skip
    return dict(seconds=sorted(times)[len(times) // 2], step_peak_gb=peak / 1e9, mask_gb=mask_bytes / 1e9), grads


def sdpa_backends(device) -> dict:
    """Which SDPA backends run with the additive (B, 1, N, M) bf16 mask, and the kernels the default picks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    rule = layout_rule(1, device)
    B, N, M = rule.shape
    q, k, v = (torch.randn(B, 12, N, 128, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = rule.dense(torch.bfloat16)
    accepted = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):  # fmt: skip
        try:
            with sdpa_kernel([backend]):
                sdpa(q, k, v, attn_mask=mask).sum().backward()
            accepted[backend.name] = True
        except RuntimeError as error:
            accepted[backend.name] = f"no: {str(error).splitlines()[0][:120]}"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        sdpa(q, k, v, attn_mask=mask).sum().backward()
        torch.cuda.synchronize()
    # aten's op names say the backend (_scaled_dot_product_{efficient,flash,cudnn}_attention, ..._attention_math)
    picked = sorted({e.name[:90] for e in profile.events() if any(
        word in e.name.lower() for word in ("scaled_dot_product", "fmha", "flash", "cudnn", "softmax"))})  # fmt: skip
    return dict(accepted=accepted, default_ops_and_kernels=picked)


def relative_error(a: list, b: list) -> float:
    return max(((x - y).norm() / y.norm().clamp(min=1e-12)).item() for x, y in zip(a, b))


def cached_sampling(device) -> dict:
    """Logits of cached sampling (3 frames of the schedule (1, 2, 4)) with flex and with SDPA, tiny model."""
    from videoar_hf import VideoARConfig, VideoARTransformer

    logits, seconds = {}, {}
    for implementation in ("sdpa", "flex_attention"):
        torch.manual_seed(0)
        config = VideoARConfig.from_preset("tiny", scale_schedule=[1, 2, 4], frame_mask_window=1)
        model = VideoARTransformer._from_config(config, attn_implementation=implementation).to(device).eval()
        g = torch.Generator().manual_seed(0)
        text = torch.randn(2, 6, 32, generator=g).to(device)
        mask = torch.ones(2, 6, dtype=torch.long, device=device)
        mask[1, 4:] = 0
        inputs = [torch.randn(2, h, h, 8, generator=g).to(device) for _ in range(3) for h in (1, 2, 4)]  # frame, scale
        out = []
        start = time.perf_counter()
        with torch.no_grad():
            cache = model.init_cache(4, 4)
            for i in range(9):
                out.append(model(None if i == 0 else inputs[i], text, mask, cache=cache).logits)
        torch.cuda.synchronize()
        seconds[implementation] = time.perf_counter() - start
        logits[implementation] = torch.cat(out, dim=1)
    error = (logits["flex_attention"] - logits["sdpa"]).abs().max().item()
    return dict(max_abs_diff=error, equal=error < 1e-4, seconds=seconds)


def main(argv=None) -> dict:
    global ARGS
    ARGS = parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    device = torch.device("cuda")
    started = time.perf_counter()
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    def part(name, fn):
        if time.perf_counter() - started > ARGS.budget_s:
            summary[name] = "skipped: budget spent"
            return
        try:
            summary[name] = fn()
        except Exception as error:  # one failing part must not hide the others
            summary[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        torch.cuda.empty_cache()

    part("sdpa_backends", lambda: sdpa_backends(device))
    for name in ARGS.lengths:

        def compare(name=name):
            rule = layout_rule(LENGTHS[name], device)
            sdpa, sdpa_grads = train_pass("sdpa", rule)
            flex, flex_grads = train_pass("flex_attention", rule)
            return dict(tokens=rule.shape[1], sdpa=sdpa, flex=flex, flex_speedup=sdpa["seconds"] / flex["seconds"],
                        grad_relative_error=relative_error(flex_grads, sdpa_grads),
                        grads_equal_bf16=relative_error(flex_grads, sdpa_grads) < 2e-2)  # fmt: skip

        part(f"layer_{name}", compare)

    def l_layer_memory():
        rule = layout_rule(LENGTHS["33x384x672"], device)
        return {form: train_pass(impl, rule, form)[0] for impl, form in
                (("sdpa", "model"), ("sdpa", "unaligned"), ("flex_attention", "block_mask"))}  # fmt: skip

    part("l_layer_33x384x672", l_layer_memory)
    part("cached_sampling_tiny", lambda: cached_sampling(device))
    summary["seconds"] = time.perf_counter() - started
    line = json.dumps(summary, separators=(",", ":"), default=str)
    print(line)
    if ARGS.output:
        with open(ARGS.output, "w") as f:
            f.write(line + "\n")
    return summary


ARGS = None

if __name__ == "__main__":
    main()
