"""Checks and conversions of `VideoARPipeline.__call__`'s arguments, each error naming its argument.

Everything here runs before the text is encoded or anything is allocated: wrong types never reach torch, frames come
in as the user has them (PIL in any mode, uint8 or float arrays and tensors), and a video is refused when it would
not fit in the memory this machine has free, with the largest size that would.
"""

import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

MAX_PROMPT_CHARACTERS = 100_000  # far past any text encoder's limit; tokenizing more only wastes time


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def require(condition: bool, name: str, value, allowed: str) -> None:
    if not condition:
        shown = repr(value) if not isinstance(value, (torch.Tensor, np.ndarray)) else f"a {type(value).__name__} of shape {tuple(value.shape)}"
        raise ValueError(f"`{name}` must be {allowed}, got {shown[:200]}.")


def check_texts(name: str, value) -> list[str]:
    """A string or a non-empty list of strings, each of bounded length."""
    texts = [value] if isinstance(value, str) else value
    require(isinstance(texts, list) and len(texts) > 0 and all(isinstance(t, str) for t in texts), name, value,
            "a string or a non-empty list of strings")  # fmt: skip
    longest = max(len(t) for t in texts)
    require(longest <= MAX_PROMPT_CHARACTERS, name, f"a text of {longest} characters", f"at most {MAX_PROMPT_CHARACTERS} characters long")
    return texts


def check_scalars(o: dict) -> None:
    """The plain numeric and flag arguments, by type and range."""
    require(is_int(o["num_frames"]) and o["num_frames"] >= 1, "num_frames", o["num_frames"], "a positive integer")
    for name in ("height", "width"):
        require(o[name] is None or (is_int(o[name]) and o[name] >= 1), name, o[name], "None or a positive integer")
    require(is_int(o["num_videos_per_prompt"]) and o["num_videos_per_prompt"] >= 1, "num_videos_per_prompt",
            o["num_videos_per_prompt"], "a positive integer")  # fmt: skip
    require(is_int(o["top_k"]) and o["top_k"] >= 0, "top_k", o["top_k"], "an integer >= 0 (0 disables it)")
    require(o["top_p"] is None or (is_finite_number(o["top_p"]) and 0 < o["top_p"] <= 1), "top_p", o["top_p"],
            "None or a number in (0, 1]")  # fmt: skip
    require(is_finite_number(o["temperature"]) and o["temperature"] > 0, "temperature", o["temperature"], "a finite number > 0")
    require(o["max_sequence_length"] is None or (is_int(o["max_sequence_length"]) and o["max_sequence_length"] >= 1),
            "max_sequence_length", o["max_sequence_length"], "None or a positive integer")  # fmt: skip
    require(o["decode_chunk_size"] is None or (is_int(o["decode_chunk_size"]) and o["decode_chunk_size"] >= 1),
            "decode_chunk_size", o["decode_chunk_size"], "None or a positive integer")  # fmt: skip
    require(isinstance(o["return_dict"], bool), "return_dict", o["return_dict"], "True or False")
    guidance = o["guidance_scale"]
    require(isinstance(guidance, (str, list, tuple, np.ndarray, torch.Tensor)) or is_finite_number(guidance),
            "guidance_scale", guidance, "a finite number, a schedule name or a (latent frames, scales) table")  # fmt: skip
    generator = o["generator"]
    generators = generator if isinstance(generator, list) else [generator]
    require(generator is None or (len(generators) > 0 and all(isinstance(g, torch.Generator) for g in generators)),
            "generator", generator, "None, a torch.Generator or a list of them")  # fmt: skip
    callback = o["callback_on_step_end"]
    require(callback is None or callable(callback), "callback_on_step_end", callback, "None or a callable")
    inputs = o["callback_on_step_end_tensor_inputs"]
    require(isinstance(inputs, (list, tuple)) and all(isinstance(k, str) for k in inputs),
            "callback_on_step_end_tensor_inputs", inputs, "a list of names")  # fmt: skip
    for name in ("context_frames", "guidance_frames"):
        require(o[name] is None or (is_int(o[name]) and o[name] >= 1), name, o[name], "None or a positive integer")
    history = o["history_guidance_scale"]
    require(history is None or is_finite_number(history) or (isinstance(history, (list, tuple)) and len(history) > 0
            and all(is_finite_number(x) for x in history)), "history_guidance_scale", history,
            "None, a finite number or a list of them, one per scale")  # fmt: skip
    for name in ("history_frames", "history_guidance_start"):
        require(o[name] is None or (is_int(o[name]) and o[name] >= 0), name, o[name], "None or an integer >= 0")


def check_next_prompts(next_prompts, num_frames: int, tau: int, has_prompt: bool) -> None:
    """`[(frame, prompt), ...]`: frames that start a latent frame, inside the video and increasing; prompts as text."""
    if next_prompts is None:
        return
    allowed = f"a list of (frame, prompt) pairs, frames 1 + k * {tau} inside the video ({num_frames} frames), increasing"
    require(isinstance(next_prompts, (list, tuple)) and len(next_prompts) > 0, "next_prompts", next_prompts, allowed)
    last = 0
    for pair in next_prompts:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and is_int(pair[0]) and isinstance(pair[1], str)
        ok = ok and last < pair[0] < num_frames and (pair[0] - 1) % tau == 0 and bool(pair[1].strip())
        require(ok, "next_prompts", next_prompts, allowed)
        last = pair[0]
    if not has_prompt:
        raise ValueError("`next_prompts` are text: pass `prompt` (not `prompt_embeds`) and keep the text encoder.")


def frames_for_processor(name: str, value):
    """`image` / `video` as diffusers' `VideoProcessor` takes them: PIL images in RGB, float frames in [0, 1].

    Accepts PIL images in any mode, uint8 arrays and tensors (0-255), float ones (0-1; tensors also -1-1), HWC
    arrays and CHW tensors with 1, 3 or 4 channels (grey is repeated, alpha dropped), and lists of these.
    """
    if isinstance(value, (str, Path)):
        raise ValueError(f"`{name}` must be frames, not a path ({str(value)[:100]!r}): load it first, e.g. "
                         "`PIL.Image.open(path)` or `diffusers.utils.load_video(path)`.")  # fmt: skip
    if isinstance(value, list):
        require(len(value) > 0, name, value, "a non-empty list of frames")
        return [frames_for_processor(name, v) for v in value]
    if isinstance(value, PIL.Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, np.ndarray):
        return _array_frames(name, value)
    if isinstance(value, torch.Tensor):
        return _tensor_frames(name, value)
    raise ValueError(f"`{name}` must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(value).__name__}.")


def _array_frames(name: str, array: np.ndarray) -> np.ndarray:
    """numpy frames are channels-last: (..., H, W, C) or (..., H, W)."""
    array = _as_unit_float(name, array, lo=0.0)
    if array.ndim >= 2 and array.shape[-1] not in (1, 3, 4):
        array = array[..., None]  # (..., H, W): grey
    require(array.ndim >= 3 and array.size > 0, name, array, "frames shaped (H, W, C) or (F, H, W, C)")
    return _to_rgb(array, axis=-1)


def _tensor_frames(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """torch frames are channels-first: (..., C, H, W)."""
    require(tensor.ndim >= 3 and tensor.numel() > 0, name, tensor, "frames shaped (C, H, W) or (F, C, H, W)")
    require(tensor.shape[-3] in (1, 3, 4), name, tensor, "channels-first frames with 1, 3 or 4 channels")
    return _to_rgb(_as_unit_float(name, tensor.detach().cpu(), lo=-1.0), axis=-3)


def _as_unit_float(name: str, frames, lo: float):
    is_tensor = isinstance(frames, torch.Tensor)
    dtype = frames.dtype
    if dtype in (np.uint8, torch.uint8):
        return frames.float() / 255 if is_tensor else frames.astype(np.float32) / 255
    floating = frames.is_floating_point() if is_tensor else np.issubdtype(dtype, np.floating)
    require(floating, name, f"{type(frames).__name__} of dtype {dtype}", "uint8 (0-255) or float (0-1) frames")
    frames = frames.float() if is_tensor else frames.astype(np.float32)
    finite = bool(torch.isfinite(frames).all()) if is_tensor else bool(np.isfinite(frames).all())
    require(finite, name, "frames with NaN or infinite values", "finite frames")
    low, high = float(frames.min()), float(frames.max())
    require(lo - 1e-3 <= low and high <= 1 + 1e-3, name, f"float frames in [{low:.3g}, {high:.3g}]",
            f"float frames in [{lo:g}, 1] (or uint8 frames in 0-255)")  # fmt: skip
    return frames


def _to_rgb(frames, axis: int):
    channels = frames.shape[axis]
    if channels == 3:
        return frames
    if channels == 4:  # drop alpha
        return frames[..., :3] if axis == -1 else frames[..., :3, :, :]
    if isinstance(frames, torch.Tensor):  # grey
        return frames.expand(*frames.shape[:-3], 3, *frames.shape[-2:]).contiguous()
    return np.repeat(frames, 3, axis=axis)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the video will be made: the accelerator's, or this machine's RAM; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # Linux's estimate of what can be allocated without swapping, page cache included
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def sampling_bytes(pipe, batch: int, num_latent_frames: int, latent_size: tuple[int, int], text_length: int,
                   branches: int, decode_frames: int) -> int:  # fmt: skip
    """A generous estimate of the memory one call needs: the KV cache, the latents, and the decode."""
    config = pipe.transformer.config
    scale_sizes = pipe.transformer.scale_sizes(*latent_size)
    tokens_per_frame = sum(h * w for h, w in scale_sizes)
    window = config.frame_mask_window
    cached_frames = num_latent_frames if window is None else min(num_latent_frames, window + 1)
    rows = batch * branches  # conditional, unconditional, short history
    element = pipe.transformer.dtype.itemsize
    kv_cache = 2 * config.num_hidden_layers * rows * (text_length + cached_frames * tokens_per_frame) * config.hidden_size * element
    latents = batch * config.latent_bits * num_latent_frames * latent_size[0] * latent_size[1] * 4
    tokenizer = pipe.video_tokenizer.config
    f = tokenizer.spatial_compression_ratio
    pixels = batch * decode_frames * latent_size[0] * f * latent_size[1] * f
    decode = pixels * 4 * (3 * 3 + 3 * tokenizer.base_channels * tokenizer.channel_multipliers[0])
    return kv_cache + latents + decode


def check_embeds(name: str, value, reference) -> int | None:
    """A `(B, L, C)` embedding, or a `(B, L)` mask when `reference` is its embedding; return B."""
    if value is None:
        return None
    ndim = 3 if reference is None or name.endswith("_embeds") else 2
    if not torch.is_tensor(value) or value.ndim != ndim or value.shape[0] == 0:
        raise ValueError(f"`{name}` must be a {ndim}D tensor with a non-empty batch, got {getattr(value, 'shape', value)!r}.")
    if reference is not None and value.shape[0] != reference.shape[0]:
        raise ValueError(f"`{name}` has a batch of {value.shape[0]}, but its prompt embeddings have {reference.shape[0]}.")
    if reference is not None and ndim == 2 and tuple(value.shape) != tuple(reference.shape[:2]):
        raise ValueError(f"`{name}` must be shaped {tuple(reference.shape[:2])} like its embeddings, got {tuple(value.shape)}.")
    return value.shape[0]


def check_memory(pipe, o: dict, batch: int) -> None:
    """Refuse, before allocating anything, a call that would not fit in the free memory; say what would."""
    free = available_memory_bytes(pipe._execution_device)
    if free is None:
        return
    f, tau = pipe.video_tokenizer.config.spatial_compression_ratio, pipe.video_tokenizer.config.temporal_compression_ratio
    latent_size = (o["height"] // f, o["width"] // f)
    text_length = o["max_sequence_length"] or getattr(pipe.tokenizer, "model_max_length", 512)
    text_length = min(text_length, 512) if o["prompt_embeds"] is None else o["prompt_embeds"].shape[1]
    history = o["history_guidance_scale"]
    history = getattr(pipe.transformer.config, "history_guidance_scale", 1.0) if history is None else history
    # guidance is counted as on (a table or a callback may still turn it on); the short-history branch when asked for
    branches = 2 + bool((np.asarray(history) != 1).any())
    chunk = o["decode_chunk_size"]

    def need(num_frames: int, videos: int) -> int:
        decoded = 0 if o["output_type"] == "latent" else num_frames if chunk is None else min(num_frames, 1 + tau * chunk)
        return sampling_bytes(pipe, videos, 1 + (num_frames - 1) // tau, latent_size, text_length, branches, decoded)

    num_frames = o["num_frames"]
    if need(num_frames, batch) <= free:
        return
    k_fit = largest_fitting(lambda k: need(1 + tau * k, batch) <= free, (num_frames - 1) // tau)
    batch_fit = largest_fitting(lambda b: need(num_frames, b) <= free, batch)
    frames_fit = "no length fits" if k_fit is None else f"at most {1 + tau * k_fit} frames fit at this batch"
    raise ValueError(
        f"`num_frames` = {num_frames} for {batch} video(s) needs about {need(num_frames, batch) / 2**30:.1f} GiB, "
        f"but {free / 2**30:.1f} GiB are free: {frames_fit}, and at most {batch_fit or 0} video(s) of "
        f"{num_frames} frames (`num_videos_per_prompt` x prompts). `decode_chunk_size` or a frame window "
        "(`transformer.config.frame_mask_window`) lowers the need."
    )


def largest_fitting(fits, upper: int) -> int | None:
    """The largest n in [0, upper] with `fits(n)`, or None; `fits` must be monotonic (true up to some n)."""
    lo, hi, best = 0, upper, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best
