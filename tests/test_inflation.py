"""Inflating a 2D image tokenizer into the causal 3D tokenizer (docs/method.md §2, "Init")."""

import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from videoar_hf.causal_cnn import CausalConv3d
from videoar_hf.inflation import inflate_state_dict, reinflate_image_trained
from videoar_hf.modeling_tokenizer import VideoARTokenizer

WIDTHS = (8, 16, 16, 16)


def tiny_tokenizer(tau: int, latent_channels: int = 6, base_channels: int = 8) -> VideoARTokenizer:
    torch.manual_seed(0)
    return VideoARTokenizer(
        latent_channels=latent_channels,
        base_channels=base_channels,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=1,
        spatial_compression_ratio=8,
        temporal_compression_ratio=tau,
        scale_schedule=(1, 2, 4),
        norm_num_groups=4,
        sample_size=32,
    ).eval()


def ldm_state_dict(tokenizer: VideoARTokenizer) -> dict[str, torch.Tensor]:
    """A random 2D LDM state dict of `tokenizer`'s architecture: no time axis, no `.conv` level in causal convs."""
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, value in tokenizer.state_dict().items():
        if key.endswith(".earlier_frame"):  # ours alone: 2D networks repeat frames without parameters
            continue
        key_2d = re.sub(r"\.conv\.(weight|bias)$", r".\1", key)
        shape_2d = (*value.shape[:2], *value.shape[3:]) if value.ndim == 5 else value.shape
        state_dict[key_2d] = torch.randn(shape_2d, generator=generator) * 0.3
    return state_dict


def infinity_naming(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM keys -> Infinity's, whose every conv and norm sits in a `.conv` / `.norm` wrapper."""

    def rename(key: str) -> str:
        layer, parameter = key.rsplit(".", 1)
        wrapper = "norm" if layer.rsplit(".", 1)[-1].startswith("norm") else "conv"
        return f"{layer}.{wrapper}.{parameter}"

    return {rename(key): value for key, value in state_dict.items()}


def test_ldm_keys_are_the_expected_names():
    state_dict = ldm_state_dict(tiny_tokenizer(4))
    for key in (
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.norm_out.weight",
        "decoder.up.1.upsample.conv.weight",
    ):
        assert key in state_dict
    assert state_dict["encoder.conv_in.weight"].shape == (8, 3, 3, 3)
    assert state_dict["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)


@pytest.mark.parametrize("tau", (1, 2, 4))
def test_every_inflated_conv_is_its_2d_conv_frame_by_frame(tau):
    """On one frame, and on every frame of a video: each output frame sees only its own input frame at first."""
    tokenizer = tiny_tokenizer(tau)
    state_dict_2d = ldm_state_dict(tokenizer)
    inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
    tokenizer.load_state_dict(inflated, strict=True)
    assert unused == [] and reinitialized == []

    causal = {name for name, module in tokenizer.named_modules() if isinstance(module, CausalConv3d)}
    convs = {
        name: module
        for name, module in tokenizer.named_modules()
        if isinstance(module, CausalConv3d) or (isinstance(module, nn.Conv3d) and name.rpartition(".")[0] not in causal)
    }
    assert len(convs) == len([k for k, v in state_dict_2d.items() if v.ndim == 4])
    generator = torch.Generator().manual_seed(1)
    for name, conv in convs.items():
        weight, bias = state_dict_2d[f"{name}.weight"], state_dict_2d[f"{name}.bias"]
        for num_frames in (1, 3):
            video_BCTHW = torch.randn(2, weight.shape[1], num_frames, 8, 8, generator=generator)
            # a temporal stride-2 conv keeps frames 0, 2, 4, ... (1 + 2k -> 1 + k)
            frames = video_BCTHW[:, :, :: conv.conv.stride[0] if name in causal else 1].unbind(2)
            if name.endswith("downsample.conv"):
                # LDM's downsampler: pad right and bottom by one, then a stride-2 convolution without padding
                expected = [F.conv2d(F.pad(frame, (0, 1, 0, 1)), weight, bias, stride=2) for frame in frames]
            else:
                expected = [F.conv2d(frame, weight, bias, padding=weight.shape[-1] // 2) for frame in frames]
            with torch.no_grad():
                torch.testing.assert_close(conv(video_BCTHW), torch.stack(expected, 2), msg=name)


def test_infinity_naming_inflates_the_same():
    tokenizer = tiny_tokenizer(4)
    state_dict_2d = ldm_state_dict(tokenizer)
    from_ldm = inflate_state_dict(state_dict_2d, tokenizer).state_dict
    from_infinity, unused, reinitialized = inflate_state_dict(infinity_naming(state_dict_2d), tokenizer)
    assert unused == [] and reinitialized == []
    assert from_infinity.keys() == from_ldm.keys() == tokenizer.state_dict().keys()
    assert all(torch.equal(from_infinity[key], from_ldm[key]) for key in from_ldm)


def infinity_layout_state_dict(
    base_channels: int, multipliers: tuple[int, ...], num_res_blocks: int, bits: int, attention: bool = False
) -> dict[str, torch.Tensor]:
    """A random 2D state dict laid out as Infinity's `bsq_vae` AutoEncoder would save it, built from its module
    structure rather than from ours: every conv is `Conv.conv` and every norm `Normalize.norm`; levels below the last
    downsample (encoder) / above the first upsample (decoder); the mid blocks' attention only with `attention`
    (Infinity's loader builds its VAEs without); and the quantizer's bit-mask buffer."""
    generator = torch.Generator().manual_seed(3)
    state_dict = {}

    def add(key: str, *shape: int) -> None:
        state_dict[key] = torch.randn(shape, generator=generator) * 0.3

    def conv(name: str, out_channels: int, in_channels: int, kernel: int) -> None:
        add(f"{name}.conv.weight", out_channels, in_channels, kernel, kernel)
        add(f"{name}.conv.bias", out_channels)

    def norm(name: str, channels: int) -> None:
        add(f"{name}.norm.weight", channels)
        add(f"{name}.norm.bias", channels)

    def resnet(name: str, in_channels: int, out_channels: int) -> None:
        norm(f"{name}.norm1", in_channels)
        conv(f"{name}.conv1", out_channels, in_channels, 3)
        norm(f"{name}.norm2", out_channels)
        conv(f"{name}.conv2", out_channels, out_channels, 3)
        if in_channels != out_channels:
            conv(f"{name}.nin_shortcut", out_channels, in_channels, 1)

    def mid(name: str, channels: int) -> None:
        resnet(f"{name}.block_1", channels, channels)
        if attention:
            norm(f"{name}.attn_1.norm", channels)
            for projection in ("q", "k", "v", "proj_out"):
                conv(f"{name}.attn_1.{projection}", channels, channels, 1)
        resnet(f"{name}.block_2", channels, channels)

    num_levels, widths = len(multipliers), [base_channels * m for m in multipliers]
    conv("encoder.conv_in", base_channels, 3, 3)
    block_in = base_channels
    for i, width in enumerate(widths):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, width)
            block_in = width
        if i < num_levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", width, width, 3)
    mid("encoder.mid", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", bits, block_in, 3)

    conv("decoder.conv_in", block_in, bits, 3)
    mid("decoder.mid", block_in)
    for i in reversed(range(num_levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
        if i >= 1:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", 3, block_in, 3)
    state_dict["quantizer.lfq.mask"] = 2 ** torch.arange(bits - 1, -1, -1)
    return state_dict


def our_key(tokenizer: VideoARTokenizer, key_2d: str) -> str:
    """An LDM or Infinity key -> ours: as it is, without Infinity's wrapper level, or with our causal convs' `.conv`."""
    candidates = (
        key_2d,
        re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", key_2d),
        re.sub(r"\.(weight|bias)$", r".conv.\1", key_2d),
    )
    return next(key for key in candidates if key in tokenizer.state_dict())


def assert_inflated_from(
    tokenizer: VideoARTokenizer, inflated: dict[str, torch.Tensor], state_dict_2d: dict[str, torch.Tensor], skip=()
) -> None:
    """Every 2D tensor but `skip` is in the last temporal slice of its 3D kernel (earlier slices zero) or copied."""
    for key_2d, tensor_2d in state_dict_2d.items():
        if key_2d in skip:
            continue
        tensor_3d = inflated[our_key(tokenizer, key_2d)]
        if tensor_3d.ndim == 5 and tensor_2d.ndim == 4:
            assert torch.equal(tensor_3d[:, :, -1], tensor_2d), key_2d
            assert not tensor_3d[:, :, :-1].any(), key_2d
        else:
            assert torch.equal(tensor_3d, tensor_2d), key_2d


LATENT_KEYS = ["encoder.conv_out.conv.weight", "encoder.conv_out.conv.bias", "decoder.conv_in.conv.weight"]
ATTENTION_OUTPUTS = [f"{part}.mid.attn_1.proj_out.{p}" for part in ("encoder", "decoder") for p in ("weight", "bias")]


def test_infinity_layout_inflates_and_its_missing_attention_starts_as_the_identity():
    tokenizer = tiny_tokenizer(4)
    state_dict_2d = infinity_layout_state_dict(8, (1, 2, 2, 2), num_res_blocks=1, bits=6)
    inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
    assert unused == ["quantizer.lfq.mask"]
    assert reinitialized == ATTENTION_OUTPUTS
    assert_inflated_from(tokenizer, inflated, {k: v for k, v in state_dict_2d.items() if k not in unused})
    # the same keys in LDM naming give the same tensors
    ldm = {re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in state_dict_2d.items() if k not in unused}
    from_ldm = inflate_state_dict(ldm, tokenizer).state_dict
    assert from_ldm.keys() == inflated.keys() and all(torch.equal(from_ldm[k], inflated[k]) for k in inflated)

    missing, unexpected = tokenizer.load_state_dict(inflated, strict=False)
    assert unexpected == [] and all(".mid.attn_1." in key for key in missing)
    x_BCTHW = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        for attention in (tokenizer.encoder.mid.attn_1, tokenizer.decoder.mid.attn_1):
            torch.testing.assert_close(attention(x_BCTHW), x_BCTHW, rtol=0, atol=0)


def test_infinity_layout_with_attention_inflates_it():
    tokenizer = tiny_tokenizer(4)
    state_dict_2d = infinity_layout_state_dict(8, (1, 2, 2, 2), num_res_blocks=1, bits=6, attention=True)
    inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
    assert unused == ["quantizer.lfq.mask"] and reinitialized == []
    assert_inflated_from(tokenizer, inflated, state_dict_2d, skip=unused)
    tokenizer.load_state_dict(inflated, strict=True)


def test_another_latent_width_reinitialises_the_latent_layers(caplog):
    """d = 8 into d = 12: the latent layers are re-initialised and named, everything else is inflated."""
    state_dict_2d = ldm_state_dict(tiny_tokenizer(4, latent_channels=8))
    tokenizer = tiny_tokenizer(4, latent_channels=12)
    with caplog.at_level(logging.WARNING, logger="videoar_hf.inflation"):
        inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer, torch.Generator().manual_seed(0))
    assert unused == [] and reinitialized == LATENT_KEYS
    assert all(key in caplog.text for key in LATENT_KEYS) and "12" in caplog.text
    latent_keys_2d = {"encoder.conv_out.weight", "encoder.conv_out.bias", "decoder.conv_in.weight"}
    assert_inflated_from(tokenizer, inflated, state_dict_2d, skip=latent_keys_2d)
    assert torch.equal(inflated["decoder.conv_in.conv.bias"], state_dict_2d["decoder.conv_in.bias"]), "not d-sized"

    # fresh 2D kernels in the last slice, drawn as nn.Conv2d draws them: |w| <= 1 / sqrt(fan_in)
    for key in LATENT_KEYS:
        value = inflated[key]
        assert value.shape == tokenizer.state_dict()[key].shape
        fan_in = 16 * 9 if key.startswith("encoder") else 12 * 9
        assert value.abs().max() <= 1 / math.sqrt(fan_in) and value.abs().max() > 0.5 / math.sqrt(fan_in), key
        if value.ndim == 5:
            assert not value[:, :, :-1].any(), key
    again = inflate_state_dict(state_dict_2d, tokenizer, torch.Generator().manual_seed(0)).state_dict
    assert all(torch.equal(again[key], inflated[key]) for key in LATENT_KEYS), "the generator decides"

    tokenizer.load_state_dict(inflated, strict=True)
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        output = tokenizer(video)
    assert output.latents.shape[1] == 12 and torch.isfinite(output.sample).all()


def test_infinity_d32_into_the_papers_d48():
    tokenizer = tiny_tokenizer(4, latent_channels=48, base_channels=4)
    state_dict_2d = infinity_layout_state_dict(4, (1, 2, 2, 2), num_res_blocks=1, bits=32)
    inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
    assert unused == ["quantizer.lfq.mask"]
    assert reinitialized == LATENT_KEYS + ATTENTION_OUTPUTS
    assert inflated["encoder.conv_out.conv.weight"].shape == (48, 8, 3, 3, 3)
    assert inflated["decoder.conv_in.conv.weight"].shape == (8, 48, 3, 3, 3)
    latent_keys_2d = {"encoder.conv_out.conv.weight", "encoder.conv_out.conv.bias", "decoder.conv_in.conv.weight"}
    assert_inflated_from(tokenizer, inflated, state_dict_2d, skip={*unused, *latent_keys_2d})
    missing, unexpected = tokenizer.load_state_dict(inflated, strict=False)
    assert unexpected == [] and all(".mid.attn_1." in key for key in missing)


@pytest.mark.parametrize("tau", (1, 2, 4))
def test_inflated_tokenizer_is_the_2d_network_frame_by_frame(tau):
    """diffusers' own LDM conversion and 2D VAE blocks are the reference, which also pins our naming to LDM's.

    Latent frame k encodes pixel frame tau k (temporal downsampling keeps every other frame), and decoded frame t
    shows latent frame ceil(t / tau) (temporal upsampling repeats frames); a single image is exactly the 2D network.
    """
    tokenizer = tiny_tokenizer(tau)
    state_dict_2d = ldm_state_dict(tokenizer)
    tokenizer.load_state_dict(inflate_state_dict(state_dict_2d, tokenizer)[0])

    down_types, up_types = ("DownEncoderBlock2D",) * len(WIDTHS), ("UpDecoderBlock2D",) * len(WIDTHS)
    diffusers_state_dict = convert_ldm_vae_checkpoint(
        state_dict_2d, {"down_block_types": down_types, "up_block_types": up_types}
    )
    network = dict(block_out_channels=WIDTHS, layers_per_block=1, norm_num_groups=4)
    encoder_2d = Encoder(3, 6, down_types, double_z=False, **network).eval()
    decoder_2d = Decoder(6, 3, up_types, **network).eval()
    for prefix, network_2d in (("encoder.", encoder_2d), ("decoder.", decoder_2d)):
        part = {k.removeprefix(prefix): v for k, v in diffusers_state_dict.items() if k.startswith(prefix)}
        network_2d.load_state_dict(part, strict=True)

    video_BCTHW = torch.rand(1, 3, 1 + tau, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latents_BCTHW = tokenizer.encode(video_BCTHW).latents
        sample_BCTHW = tokenizer.decode(latents_BCTHW).sample
        for k in range(latents_BCTHW.shape[2]):
            torch.testing.assert_close(latents_BCTHW[:, :, k], encoder_2d(video_BCTHW[:, :, tau * k]))
        for t in range(sample_BCTHW.shape[2]):
            torch.testing.assert_close(sample_BCTHW[:, :, t], decoder_2d(latents_BCTHW[:, :, -(-t // tau)]))


def test_unknown_2d_keys_are_reported():
    tokenizer = tiny_tokenizer(4)
    state_dict_2d = ldm_state_dict(tokenizer)
    state_dict_2d["quant_conv.weight"] = torch.zeros(12, 12, 1, 1)
    state_dict_2d["encoder.down.3.attn.0.q.weight"] = torch.zeros(16, 16, 1, 1)
    del state_dict_2d["decoder.conv_out.bias"]
    inflated, unused, reinitialized = inflate_state_dict(state_dict_2d, tokenizer)
    assert unused == ["quant_conv.weight", "encoder.down.3.attn.0.q.weight"] and reinitialized == []
    missing, unexpected = tokenizer.load_state_dict(inflated, strict=False)
    assert missing == ["decoder.conv_out.conv.bias"] and unexpected == []


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("encoder.down.1.block.0.conv1.weight", (32, 8, 3, 3)),  # a wider level
        ("encoder.conv_out.weight", (6, 32, 3, 3)),  # a wider last level feeds the latent layer
        ("encoder.conv_out.weight", (32, 32, 3, 3)),  # a wider level and another latent width
        ("decoder.conv_in.weight", (32, 6, 3, 3)),
        ("encoder.mid.attn_1.norm.weight", (32,)),
    ],
)
def test_shape_mismatch_names_the_key(key, shape):
    tokenizer = tiny_tokenizer(4)
    state_dict_2d = ldm_state_dict(tokenizer)
    state_dict_2d[key] = torch.zeros(shape)
    with pytest.raises(ValueError, match=re.escape(f"`{key}`")):
        inflate_state_dict(state_dict_2d, tokenizer)


def test_reinflating_an_image_trained_tokenizer_keeps_images_and_codes_video_frames_alone():
    tokenizer = tiny_tokenizer(1).eval()
    video = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        images_before = [tokenizer(video[:, :, t : t + 1]).sample for t in range(3)]
        assert not torch.allclose(tokenizer(video).sample, torch.cat(images_before, dim=2), atol=1e-4)
        reinflate_image_trained(tokenizer)
        images_after = [tokenizer(video[:, :, t : t + 1]).sample for t in range(3)]
        for before, after in zip(images_before, images_after):
            torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        # at temporal compression 1, each frame is now coded as if it were alone
        torch.testing.assert_close(tokenizer(video).sample, torch.cat(images_after, dim=2), atol=1e-5, rtol=1e-5)
