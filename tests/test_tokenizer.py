import pytest
import torch
import torch.nn.functional as F

from videoar_hf.causal_cnn import CausalConv3d, Downsample3D, Upsample3D, causal_streaming
from videoar_hf.modeling_tokenizer import VideoARTokenizer
from videoar_hf.testing_utils import tiny_tokenizer_config

TAUS = (1, 2, 4)
SIZE = 32  # 4x4 latents at spatial compression 8: three scales (1, 2, 4)


def tiny_config(**overrides) -> dict:
    return tiny_tokenizer_config(**{"latent_channels": 6, **overrides})


def tiny_tokenizer(tau: int = 4) -> VideoARTokenizer:
    torch.manual_seed(0)
    model = VideoARTokenizer(**tiny_config(temporal_compression_ratio=tau)).eval()
    with torch.no_grad():  # as after training: the two frames of each upsampled pair differ
        for name, parameter in model.named_parameters():
            if name.endswith("earlier_frame"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def random_video(num_latent_frames: int, tau: int, size: int = SIZE, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, 1 + tau * (num_latent_frames - 1), size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("tau", TAUS)
def test_shapes(tau):
    model = tiny_tokenizer(tau)
    video = random_video(3, tau, batch=2)
    with torch.no_grad():
        latents = model.encode(video).latents
        quantized = model.quantize(latents)
        sample = model.decode(quantized.features).sample
    assert latents.shape == (2, 6, 3, 4, 4)
    assert [tuple(b.shape) for b in quantized.bits] == [(2, 3, s, s, 6) for s in (1, 2, 4)]
    assert all(b.dtype == torch.bool for b in quantized.bits)
    assert sample.shape == video.shape
    assert model.num_latent_frames(video.shape[2]) == 3
    assert model.scale_sizes(SIZE, SIZE) == [(1, 1), (2, 2), (4, 4)]


def test_spatial_compression_16():
    torch.manual_seed(0)
    config = tiny_config(channel_multipliers=(1, 1, 2, 2, 2), spatial_compression_ratio=16, scale_schedule=(1, 2))
    model = VideoARTokenizer(**config).eval()
    video = random_video(2, 4, size=32)
    with torch.no_grad():
        latents = model.encode(video).latents
        assert latents.shape == (1, 6, 2, 2, 2)
        assert model.decode(model.quantize(latents).features).sample.shape == video.shape


@pytest.mark.parametrize("tau", TAUS)
def test_single_image(tau):
    model = tiny_tokenizer(tau)
    image = random_video(1, tau, size=16)
    with torch.no_grad():
        output = model(image)
    assert output.features.shape == (1, 6, 1, 2, 2)
    assert output.sample.shape == image.shape


@pytest.mark.parametrize("tau", TAUS)
def test_encoder_is_causal(tau):
    model = tiny_tokenizer(tau)
    video = random_video(3, tau)
    first_frame_of_latent_2 = 1 + tau
    changed = video.clone()
    changed[:, :, first_frame_of_latent_2:] = torch.rand_like(changed[:, :, first_frame_of_latent_2:])
    with torch.no_grad():
        latents, changed_latents = model.encode(video).latents, model.encode(changed).latents
    assert torch.equal(latents[:, :, :2], changed_latents[:, :, :2])
    assert not torch.equal(latents[:, :, 2], changed_latents[:, :, 2])


@pytest.mark.parametrize("tau", TAUS)
def test_decoder_is_causal(tau):
    model = tiny_tokenizer(tau)
    features = torch.randn(1, 6, 3, 4, 4)
    changed = features.clone()
    changed[:, :, 2] = torch.randn_like(changed[:, :, 2])
    with torch.no_grad():
        sample, changed_sample = model.decode(features).sample, model.decode(changed).sample
    first_frame_of_latent_2 = 1 + tau
    assert torch.equal(sample[:, :, :first_frame_of_latent_2], changed_sample[:, :, :first_frame_of_latent_2])
    assert not torch.equal(sample[:, :, first_frame_of_latent_2:], changed_sample[:, :, first_frame_of_latent_2:])


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("chunk_size", (1, 2))
def test_chunked_coding_equals_one_pass(tau, chunk_size):
    model = tiny_tokenizer(tau)
    video = random_video(3, tau)
    with torch.no_grad():
        latents = model.encode(video).latents
        chunked_latents = model.encode(video, chunk_size=chunk_size).latents
        sample = model.decode(latents).sample
        chunked_sample = model.decode(latents, chunk_size=chunk_size).sample
    torch.testing.assert_close(chunked_latents, latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked_sample, sample, rtol=0, atol=1e-5)
    # the streaming state is gone afterwards: a plain call still gives the one-pass result
    with torch.no_grad():
        assert torch.equal(model.encode(video).latents, latents)


def test_streaming_state_is_cleared_on_error():
    model = tiny_tokenizer()
    with pytest.raises(RuntimeError), torch.no_grad(), causal_streaming(model.encoder):
        model.encoder(random_video(2, 4))
        raise RuntimeError("interrupted")
    convs = [m for m in model.encoder.modules() if isinstance(m, CausalConv3d)]
    assert all(not conv.streaming and conv._tail_BCTHW is None for conv in convs)


def test_quantizer_round_trip():
    model = tiny_tokenizer()
    video = random_video(2, 4)
    with torch.no_grad():
        quantized = model.quantize(model.encode(video).latents)
        features = model.quantizer.bits_to_features(quantized.bits, (4, 4))
        assert torch.equal(features, quantized.features)
        assert torch.equal(model.decode_bits(quantized.bits).sample, model.decode(quantized.features).sample)


def test_forward_decodes_exactly_from_quantized_features_and_trains_encoder():
    model = tiny_tokenizer()
    video = random_video(2, 4)
    output = model(video)
    with torch.no_grad():
        latents = model.encode(video).latents
        f_hat = model.quantizer.residual_quantize(latents, model.scale_sizes(SIZE, SIZE)).features
        assert torch.equal(output.features, f_hat)
        assert torch.equal(output.sample, model.decode(f_hat).sample)
        torch.testing.assert_close(output.commitment_loss, torch.mean((latents - f_hat) ** 2))

    (F.mse_loss(output.sample, video) + output.commitment_loss).backward()
    encoder_grad = model.encoder.conv_in.conv.weight.grad
    assert encoder_grad is not None and encoder_grad.abs().sum() > 0


def test_nested_dropout_decodes_the_first_scales_alone_and_still_trains_the_encoder():
    model = tiny_tokenizer()
    video = random_video(2, 4)
    with torch.no_grad():
        whole = model.quantize(model.encode(video).latents)
    for num_scales in (1, 2):
        output = model(video, num_scales=num_scales)
        coarse = model.quantizer.bits_to_features(whole.bits[:num_scales], (4, 4))
        assert torch.equal(output.features.detach(), coarse)
        assert not torch.equal(coarse, whole.features), "the finer scales are left out"
        torch.testing.assert_close(output.commitment_loss, whole.commitment_loss)  # always the whole pyramid's
        model.zero_grad()
        F.mse_loss(output.sample, video).backward()
        assert model.encoder.conv_in.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(model(video, num_scales=3).sample, model(video).sample), "all three scales: the plain pass"
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError, match="num_scales"):
            model(video, num_scales=bad)


def test_gradient_checkpointing_matches():
    video = random_video(2, 4)

    def loss_and_grads(model):
        output = model(video)
        loss = F.mse_loss(output.sample, video) + output.commitment_loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = tiny_tokenizer().train()
    checkpointed = tiny_tokenizer().train()
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.encoder.gradient_checkpointing and checkpointed.decoder.gradient_checkpointing
    loss, grads = loss_and_grads(plain)
    checkpointed_loss, checkpointed_grads = loss_and_grads(checkpointed)
    torch.testing.assert_close(checkpointed_loss, loss)
    torch.testing.assert_close(checkpointed_grads, grads)
    with pytest.raises(ValueError, match="chunk_size"):
        checkpointed.encode(video, chunk_size=1)


def test_save_and_reload(tmp_path):
    model = tiny_tokenizer()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    reloaded = VideoARTokenizer.from_pretrained(tmp_path).eval()
    video = random_video(2, 4)
    with torch.no_grad():
        assert torch.equal(reloaded(video).sample, model(video).sample)


def test_a_deeper_decoder_keeps_the_encoder_and_reloads(tmp_path):
    torch.manual_seed(0)
    plain = VideoARTokenizer(**tiny_config())
    torch.manual_seed(0)
    deep = VideoARTokenizer(**tiny_config(decoder_num_res_blocks=3))
    assert [len(level.block) for level in deep.decoder.up] == [4] * len(plain.decoder.up)  # one more, as LDM's
    assert [len(level.block) for level in plain.decoder.up] == [2] * len(plain.decoder.up)
    assert all(len(level.block) == 1 for level in deep.encoder.down)
    video = random_video(2, 4)
    with torch.no_grad():
        assert torch.equal(deep.encode(video).latents, plain.encode(video).latents)
    deep.save_pretrained(tmp_path)
    reloaded = VideoARTokenizer.from_pretrained(tmp_path).eval()
    assert reloaded.config.decoder_num_res_blocks == 3
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(video).sample, deep.eval()(video).sample)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"temporal_compression_ratio": 3}, "temporal_compression_ratio"),
        ({"spatial_compression_ratio": 32}, "spatial_compression_ratio"),
        ({"spatial_compression_ratio": 16}, "spatial_compression_ratio"),  # 4 levels give 8
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"scale_schedule": (1, 4, 2)}, "scale_schedule"),
        ({"quantizer_upsample_mode": "area"}, "quantizer_upsample_mode"),
        ({"sample_size": 20}, "sample_size"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"decoder_num_res_blocks": 0}, "decoder_num_res_blocks"),
        ({"decoder_num_res_blocks": 1.5}, "decoder_num_res_blocks"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        VideoARTokenizer(**tiny_config(**overrides))


def test_bad_inputs_raise():
    model = tiny_tokenizer(tau=4)
    with pytest.raises(ValueError, match=r"`num_frames`.*nearest valid values: \[5, 9\]"):
        model.encode(torch.zeros(1, 3, 7, SIZE, SIZE))
    with pytest.raises(ValueError, match="`height`"):
        model.encode(torch.zeros(1, 3, 5, 20, SIZE))
    with pytest.raises(ValueError, match="`width`"):
        model.validate_video_shape(5, SIZE, 0)
    with pytest.raises(ValueError, match="scale_schedule"):
        model.encode(torch.zeros(1, 3, 5, 24, 24))  # 3x3 latents: 3 is not in (1, 2, 4)
    with pytest.raises(ValueError, match="`video`.*3 channels"):
        model.encode(torch.zeros(1, 4, 5, SIZE, SIZE))
    with pytest.raises(ValueError, match="`video`"):
        model.encode(torch.zeros(3, 5, SIZE, SIZE))
    with pytest.raises(ValueError, match="`features`.*6 channels"):
        model.decode(torch.zeros(1, 5, 2, 4, 4))
    with pytest.raises(ValueError, match="`chunk_size`"):
        model.decode(torch.zeros(1, 6, 2, 4, 4), chunk_size=0)


def test_inflated_conv_equals_2d_conv_on_one_frame():
    torch.manual_seed(0)
    image_BCHW = torch.randn(2, 4, 8, 8)

    conv = CausalConv3d(4, 5, kernel_size=3)
    weight_2d = torch.randn(5, 4, 3, 3)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[:, :, -1] = weight_2d
    expected = F.conv2d(image_BCHW, weight_2d, conv.conv.bias, padding=1)
    torch.testing.assert_close(conv(image_BCHW.unsqueeze(2)).squeeze(2), expected)

    downsample = Downsample3D(4, temporal=True)
    weight_2d = torch.randn(4, 4, 3, 3)
    with torch.no_grad():
        downsample.conv.conv.weight.zero_()
        downsample.conv.conv.weight[:, :, -1] = weight_2d
    # LDM's downsampler: pad right and bottom by one, then a stride-2 convolution without padding
    expected = F.conv2d(F.pad(image_BCHW, (0, 1, 0, 1)), weight_2d, downsample.conv.conv.bias, stride=2)
    torch.testing.assert_close(downsample(image_BCHW.unsqueeze(2)).squeeze(2), expected)


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2)])
def test_single_frame_shortcut_equals_the_causal_3d_conv(stride):
    conv = CausalConv3d(4, 6, kernel_size=3, stride=stride, spatial_padding=(0, 1, 0, 1) if stride[1] == 2 else None)
    x = torch.randn(2, 4, 1, 8, 8)
    pad = (0, 1, 0, 1) if stride[1] == 2 else (1, 1, 1, 1)
    replicated = F.pad(x, pad).expand(-1, -1, 3, -1, -1)  # the first frame twice in front, as the causal padding does
    expected = F.conv3d(replicated, conv.conv.weight, conv.conv.bias, stride=stride)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_fresh_temporal_upsampler_repeats_frames_and_learns_to_split_them():
    upsample = Upsample3D(4, temporal=True)
    x_BCTHW = torch.randn(1, 4, 3, 2, 2)
    with torch.no_grad():
        repeated = upsample.conv(F.interpolate(x_BCTHW.repeat_interleave(2, dim=2)[:, :, 1:], scale_factor=(1, 2, 2)))
        torch.testing.assert_close(upsample(x_BCTHW), repeated)  # 1 + 2 frames -> 1 + 4, no random numbers used
        upsample.earlier_frame.mul_(-1)
        assert not torch.allclose(upsample(x_BCTHW), repeated)
    assert Upsample3D(4, temporal=False).earlier_frame is None
