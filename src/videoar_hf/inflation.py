"""Inflate a 2D image tokenizer into VideoAR's causal 3D tokenizer (docs/method.md §2, "Init").

Each 2D kernel goes to the temporally last slice of its 3D kernel, the one that sees the current frame; the slices that
see earlier frames are zero. So the inflated network starts out as the 2D network run on each frame alone, except that
temporal downsampling keeps every other frame and temporal upsampling repeats frames (its `earlier_frame` mix is set to
the identity). A single image gives exactly the 2D result.

Where 2D checkpoints come from:
- Infinity's BSQ tokenizers (`infinity_vae_d16/d24/d32/d64.pth`, `infinity_vae_d32reg.pth` in the
  `FoundationVision/Infinity` Hub repo), the paper's choice. Their layout is our default config (base width 128,
  multipliers (1, 2, 4, 4, 4), 2 residual blocks, f = 16), but every conv and norm sits in a wrapper
  (`encoder.conv_in.conv.weight`, `norm1.norm.weight`, `mid.attn_1.q.conv.weight`); both that naming and LDM's are
  read. Infinity's loader builds them without the mid blocks' attention, so ours starts as the identity (below).
  They ship as pickled `.pth` files (the weights under the `vae` entry) and this project never unpickles: convert a
  checkpoint to safetensors once, somewhere you trust, and load it with `safetensors.torch.load_file`.
- LDM-layout VAEs (`encoder.conv_in.weight`, `encoder.mid.attn_1.q.weight`), e.g. Flux's `ae.safetensors`.

The paper uses d = 48 latent channels, and Infinity publishes d in {16, 24, 32, 64}: when the 2D checkpoint's latent
width differs from `latent_channels`, the layers that carry it (the encoder's `conv_out`, the decoder's `conv_in`
weight; our network has no `quant_conv` / `post_quant_conv`) are re-initialised and everything else is inflated. So is
a KL-VAE's encoder `conv_out`, which emits a mean and a log-variance, twice its decoder's width.

```python
state_dict_2d = safetensors.torch.load_file("infinity_vae_d32reg.safetensors")
inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
tokenizer.load_state_dict(inflated, strict=False)
```
"""

import logging
import math
from typing import Iterator, NamedTuple

import torch
from torch import nn

from .causal_cnn import AttentionBlock3D, CausalConv3d
from .modeling_tokenizer import VideoARTokenizer

logger = logging.getLogger(__name__)

# our tensors with a latent-width (d) axis, and that axis; `decoder.conv_in.conv.bias` has the block width and inflates
_LATENT_AXES = {"encoder.conv_out.conv.weight": 0, "encoder.conv_out.conv.bias": 0, "decoder.conv_in.conv.weight": 1}


class InflatedStateDict(NamedTuple):
    """What `inflate_state_dict` returns.

    state_dict: our keys and their values, for `tokenizer.load_state_dict(state_dict, strict=False)`.
    unused: the 2D keys no parameter of ours corresponds to (e.g. LDM's `quant_conv.weight`, Infinity's
        `quantizer.lfq.mask`).
    reinitialized: our keys whose value is new rather than a 2D tensor's: those with a latent-width axis when the 2D
        checkpoint's width differs, and the output projection of each attention block the 2D network lacks.
    """

    state_dict: dict[str, torch.Tensor]
    unused: list[str]
    reinitialized: list[str]


def inflate_state_dict(
    state_dict_2d: dict[str, torch.Tensor], tokenizer: VideoARTokenizer, generator: torch.Generator | None = None
) -> InflatedStateDict:
    """Map a 2D LDM- or Infinity-layout state dict onto `tokenizer`'s keys and shapes.

    4D conv weights `(O, I, kh, kw)` become `(O, I, kt, kh, kw)` with the 2D kernel in the last temporal slice; norms
    and biases are copied. Where only the latent width `d` differs (see `_LATENT_AXES`), the tensor gets PyTorch's
    default 2D conv init instead (drawn with `generator`), inflated the same way. A mid block whose 2D counterpart
    has no attention (Infinity's) gets a zero attention output projection, so the block starts as the identity and
    the inflated network is still the 2D one. Parameters the 2D dict lacks otherwise are left out, so
    `tokenizer.load_state_dict(state_dict, strict=False)` names them as missing. The re-initialised keys are also
    logged, as a warning.

    Raises:
        ValueError: a 2D tensor's shape does not fit its counterpart other than in `d`; the message names both keys.
    """
    targets = tokenizer.state_dict()
    inflated, used, reinitialized = {}, set(), []
    for key_3d, names_2d in _names_2d(tokenizer):
        key_2d = next((name for name in names_2d if name in state_dict_2d), None)
        if key_2d is None:
            if key_3d.endswith(".earlier_frame"):  # ours alone: the identity repeats frames, as a 2D network would
                inflated[key_3d] = torch.eye(targets[key_3d].shape[0], dtype=targets[key_3d].dtype)
            continue
        used.add(key_2d)
        if _only_latent_width_differs(state_dict_2d[key_2d], targets[key_3d].shape, key_3d):
            inflated[key_3d] = _fresh_2d_init(key_3d, targets, generator)
            reinitialized.append(key_3d)
        else:
            inflated[key_3d] = _inflate(state_dict_2d[key_2d], targets[key_3d].shape, key_2d, key_3d)

    latent_width_keys = list(reinitialized)
    attention_keys = []
    for block in _attention_missing_from_2d(tokenizer, inflated):
        for parameter in ("weight", "bias"):
            key = f"{block}.proj_out.{parameter}"
            inflated[key] = torch.zeros_like(targets[key])
            attention_keys.append(key)
    reinitialized += attention_keys

    if latent_width_keys:
        logger.warning(
            f"Inflation: the 2D checkpoint's latent width differs from `latent_channels` "
            f"({tokenizer.config.latent_channels}), re-initialised {latent_width_keys}"
        )
    if attention_keys:
        logger.warning(f"Inflation: no 2D attention, zeroed {attention_keys} so those blocks start as the identity")
    return InflatedStateDict(inflated, [key for key in state_dict_2d if key not in used], reinitialized)


def _names_2d(tokenizer: VideoARTokenizer) -> Iterator[tuple[str, tuple[str, str]]]:
    """Each of our parameter keys with its 2D names: LDM's, then Infinity's, which wraps every conv and norm."""
    causal_convs = {name for name, module in tokenizer.named_modules() if isinstance(module, CausalConv3d)}
    for key in tokenizer.state_dict():
        module_name, _, parameter = key.rpartition(".")
        layer = module_name.rpartition(".")[0]
        if layer in causal_convs:
            # ours is `{layer}.conv.{parameter}`, already Infinity's naming
            yield key, (f"{layer}.{parameter}", key)
        else:
            wrapper = "conv" if isinstance(tokenizer.get_submodule(module_name), nn.Conv3d) else "norm"
            yield key, (key, f"{module_name}.{wrapper}.{parameter}")


def _only_latent_width_differs(tensor_2d: torch.Tensor, shape_3d: torch.Size, key_3d: str) -> bool:
    axis = _LATENT_AXES.get(key_3d)
    if axis is None:
        return False
    expected = _shape_2d(shape_3d)
    if tensor_2d.ndim != len(expected):
        return False
    differing = [i for i, (got, want) in enumerate(zip(tensor_2d.shape, expected)) if got != want]
    return differing == [axis]


def _fresh_2d_init(key_3d: str, targets: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
    """`nn.Conv2d`'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, inflated like a 2D kernel:
    the inflated network's other kernels see one frame each, and its fan-in is the 2D one."""
    weight_shape = targets[key_3d.rpartition(".")[0] + ".weight"].shape
    bound = 1 / math.sqrt(math.prod(_shape_2d(weight_shape)[1:]))
    shape_3d = targets[key_3d].shape
    values_2d = (torch.rand(_shape_2d(shape_3d), generator=generator) * 2 - 1) * bound
    return _inflate(values_2d.to(targets[key_3d].dtype), shape_3d, key_3d, key_3d)


def _attention_missing_from_2d(tokenizer: VideoARTokenizer, inflated: dict[str, torch.Tensor]) -> list[str]:
    """Our attention blocks whose enclosing block was inflated but which got nothing from the 2D dict themselves."""
    missing = []
    for name, module in tokenizer.named_modules():
        if not isinstance(module, AttentionBlock3D):
            continue
        parent = name.rpartition(".")[0]
        parent_inflated = any(key.startswith(f"{parent}.") and not key.startswith(f"{name}.") for key in inflated)
        if parent_inflated and not any(key.startswith(f"{name}.") for key in inflated):
            missing.append(name)
    return missing


def _shape_2d(shape_3d: torch.Size) -> tuple[int, ...]:
    """A 3D kernel's shape without its time axis; other shapes as they are."""
    return (*shape_3d[:2], *shape_3d[3:]) if len(shape_3d) == 5 else tuple(shape_3d)


def _inflate(tensor_2d: torch.Tensor, shape_3d: torch.Size, key_2d: str, key_3d: str) -> torch.Tensor:
    is_kernel = tensor_2d.ndim == 4 and len(shape_3d) == 5
    expected = _shape_2d(shape_3d) if is_kernel else tuple(shape_3d)
    if tuple(tensor_2d.shape) != expected:
        raise ValueError(
            f"2D `{key_2d}` has shape {tuple(tensor_2d.shape)}, but `{key_3d}` {tuple(shape_3d)} needs {expected}: "
            "the tokenizer's `in_channels`, `out_channels`, `base_channels` or `channel_multipliers` differ from "
            "the 2D checkpoint's."
        )
    if not is_kernel:
        return tensor_2d
    kernel_3d = tensor_2d.new_zeros(shape_3d)
    # causal padding puts earlier frames before the current one, so only the last slice sees the current frame
    kernel_3d[:, :, -1] = tensor_2d
    return kernel_3d


@torch.no_grad()
def reinflate_image_trained(tokenizer: VideoARTokenizer) -> VideoARTokenizer:
    """In place: each causal kernel's temporal taps summed into the last slice, the others zeroed.

    A tokenizer trained on single frames only ever runs the sum of each kernel's taps (a lone frame is a 2D conv with
    the taps summed), so the taps themselves are still their random init. Summed into the last slice, they give the
    same network on images and, on video, the paper's 2D-to-3D start (docs/method.md §2, "Init"): each frame coded alone,
    ready to learn time. Returns `tokenizer`.
    """
    for module in tokenizer.modules():
        if isinstance(module, CausalConv3d):
            weight = module.conv.weight
            summed = weight.sum(dim=2)
            weight.zero_()
            weight[:, :, -1] = summed
    return tokenizer
