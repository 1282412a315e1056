"""Memory and time of a ~100M pipeline in each low-memory mode a diffusers user reaches for, one process per mode.

Every mode loads the same saved pipeline, generates the same video, and reports: the bytes of the transformer's
weights as stored, the resident memory the process peaked at above what it held before loading, the seconds per
video, and whether the frames are bit-identical to the plain run. On a CPU-only machine the offload modes move
weights from CPU to CPU: they show their overhead and their exactness here, and save accelerator memory only where
there is an accelerator.
"""

import contextlib
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

MODES = ("plain", "model_cpu_offload", "sequential_cpu_offload", "group_offload", "layerwise_bf16", "int8_weight_only")


@contextlib.contextmanager
def peak_rss_mb():
    """Yield a dict whose `"mb"` is, on exit, how far the resident memory rose above its level on entry, sampled
    every millisecond in a thread (the process's `ru_maxrss` would include the peaks of importing and building)."""
    process, done, result = psutil.Process(), threading.Event(), {}
    before = peak = process.memory_info().rss

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["mb"] = (peak - before) / 2**20


def stored_bytes(module: torch.nn.Module) -> int:
    """Bytes of the weights as stored: a quantized tensor counts its integer data and scales, not a float copy."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        parts = [getattr(tensor, name) for name in ("qdata", "scale", "zero_point") if hasattr(tensor, name)]
        for part in parts or [tensor]:
            if torch.is_tensor(part) and part.device.type != "meta":
                total += part.numel() * part.element_size()
    return total


def load(folder: str, mode: str):
    from videoar_hf import VideoARPipeline

    kwargs = {}
    if mode == "int8_weight_only":
        from diffusers import PipelineQuantizationConfig
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        int8 = TorchAoConfig(Int8WeightOnlyConfig())
        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping={"transformer": int8, "text_encoder": int8})
    pipe = VideoARPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    transformer_bytes = stored_bytes(pipe.transformer)
    cpu = torch.device("cpu")
    if mode == "model_cpu_offload":
        pipe.enable_model_cpu_offload(device=cpu)
    elif mode == "sequential_cpu_offload":
        # what `enable_sequential_cpu_offload` installs, with the device named "cpu" (accelerate rejects "cpu:0")
        from accelerate import cpu_offload

        for component in (pipe.text_encoder, pipe.transformer, pipe.video_tokenizer):
            cpu_offload(component, cpu, offload_buffers=len(component._parameters) > 0)
    elif mode == "group_offload":
        pipe.enable_group_offload(cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    elif mode == "layerwise_bf16":
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        pipe.video_tokenizer.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
        transformer_bytes = stored_bytes(pipe.transformer)
    return pipe, transformer_bytes


def _child(folder: str, mode: str, runs: int, connection) -> None:
    torch.set_num_threads(1)  # every mode on the same footing; the parent's threads do not compete
    with peak_rss_mb() as peak:
        pipe, transformer_bytes = load(folder, mode)
        times, frames = [], None
        for _ in range(runs + 1):  # the first run warms up
            start = time.perf_counter()
            frames = pipe("a red circle moving left", num_frames=17, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
            times.append(time.perf_counter() - start)
    connection.send(dict(
        transformer_weights_mb=transformer_bytes / 2**20, peak_mb=peak["mb"],
        seconds_per_video=float(np.median(times[1:])), frames=frames,
    ))  # fmt: skip


def run_mode(folder: str, mode: str, runs: int) -> dict:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child, args=(folder, mode, runs, child))
    process.start()
    if not parent.poll(timeout=1800):  # a child that died or hung must not hang the suite
        process.kill()
        raise RuntimeError(f"memory mode {mode!r}: no result (exit code {process.exitcode}).")
    result = parent.recv()
    process.join()
    return result


def memory_modes_section(pipe, runs: int = 1, modes=MODES) -> dict:
    """Save `pipe` once, then measure every mode on it; `identical_to_plain` compares the frames bit for bit."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(Path(folder) / "pipeline")
        for mode in modes:
            results[mode] = run_mode(str(Path(folder) / "pipeline"), mode, runs)
    plain = results["plain"]["frames"]
    for row in results.values():
        row["identical_to_plain"] = bool(np.array_equal(row.pop("frames"), plain))
    return results
