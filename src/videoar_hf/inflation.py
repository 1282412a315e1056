"""Inflate a 2D image tokenizer into VideoAR's causal 3D tokenizer (docs/method.md §2, "Init").

Each 2D kernel goes to the temporally last slice of its 3D kernel, the one that sees the current frame; the slices that
see earlier frames are zero. So the inflated network starts out as the 2D network run on each frame alone, except that
temporal downsampling keeps every other frame and temporal upsampling repeats frames (its `earlier_frame` mix is set to
the identity). A single image gives exactly the 2D result.

Where 2D checkpoints come from:
- Infinity's BSQ tokenizers (`infinity_vae_d16/d24/d32/d64.pth`, `infinity_vae_d32reg.pth` in the
  `FoundationVision/Infinity` Hub repo), the paper's choice. They wrap every conv and norm (`conv_in.conv.weight`,
  `norm1.norm.weight`); both that naming and LDM's are read. They ship as pickled `.pth` files and this project never
  unpickles: convert a checkpoint to safetensors once, somewhere you trust, and load it with
  `safetensors.torch.load_file`. Set `latent_channels` to the checkpoint's bit count `d`.
- LDM-layout VAEs (`encoder.conv_in.weight`, `encoder.mid.attn_1.q.weight`), e.g. Flux's `ae.safetensors`. A KL-VAE's
  encoder emits a mean and a log-variance, twice the width its decoder takes: inflate the encoder's or the decoder's
  keys alone.

```python
state_dict_2d = safetensors.torch.load_file("infinity_vae_d32reg.safetensors")
inflated, unused = inflate_state_dict(state_dict_2d, tokenizer)
tokenizer.load_state_dict(inflated)
```
"""

from typing import Iterator

import torch
from torch import nn

from .causal_cnn import CausalConv3d
from .modeling_tokenizer import VideoARTokenizer


def inflate_state_dict(
    state_dict_2d: dict[str, torch.Tensor], tokenizer: VideoARTokenizer
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a 2D LDM- or Infinity-layout state dict onto `tokenizer`'s keys and shapes.

    4D conv weights `(O, I, kh, kw)` become `(O, I, kt, kh, kw)` with the 2D kernel in the last temporal slice; norms
    and biases are copied. Returns the inflated state dict and the 2D keys nothing of ours took (e.g. `quant_conv`).
    Parameters the 2D dict lacks are left out, so `tokenizer.load_state_dict(inflated)` names them as missing.

    Raises:
        ValueError: a 2D tensor's shape does not fit its counterpart; the message names both keys.
    """
    targets = tokenizer.state_dict()
    inflated, used = {}, set()
    for key_3d, names_2d in _names_2d(tokenizer):
        key_2d = next((name for name in names_2d if name in state_dict_2d), None)
        if key_2d is not None:
            inflated[key_3d] = _inflate(state_dict_2d[key_2d], targets[key_3d].shape, key_2d, key_3d)
            used.add(key_2d)
        elif key_3d.endswith(".earlier_frame"):  # ours alone: the identity repeats frames, as a 2D network would
            inflated[key_3d] = torch.eye(targets[key_3d].shape[0], dtype=targets[key_3d].dtype)
    return inflated, [key for key in state_dict_2d if key not in used]


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


def _inflate(tensor_2d: torch.Tensor, shape_3d: torch.Size, key_2d: str, key_3d: str) -> torch.Tensor:
    is_kernel = tensor_2d.ndim == 4 and len(shape_3d) == 5
    expected = (*shape_3d[:2], *shape_3d[3:]) if is_kernel else tuple(shape_3d)
    if tuple(tensor_2d.shape) != expected:
        raise ValueError(
            f"2D `{key_2d}` has shape {tuple(tensor_2d.shape)}, but `{key_3d}` {tuple(shape_3d)} needs {expected}: "
            "the tokenizer's `in_channels`, `out_channels`, `latent_channels`, `base_channels` or "
            "`channel_multipliers` differ from the 2D checkpoint's."
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
