"""The tokenizer's training losses (docs/method.md §2) and its 3D discriminator."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import ConvNextConfig, ConvNextModel, ResNetConfig, ResNetModel

from videoar_hf.discriminator import Discriminator3D
from videoar_hf.modeling_tokenizer import VideoARTokenizer
from videoar_hf.testing_utils import tiny_tokenizer_config
from videoar_hf.tokenizer_losses import (
    LeCAMRegularizer,
    PerceptualLoss,
    TokenizerLoss,
    bit_entropy_penalty,
    foreground_mask,
    hinge_discriminator_loss,
    hinge_generator_loss,
    reconstruction_losses,
)

BITS = 6


def tiny_tokenizer() -> VideoARTokenizer:
    torch.manual_seed(0)
    return VideoARTokenizer(**tiny_tokenizer_config(latent_channels=BITS))


def tiny_discriminator() -> Discriminator3D:
    torch.manual_seed(0)
    return Discriminator3D(base_channels=8, num_layers=3, norm_num_groups=4)


def random_video(num_frames: int = 5, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, num_frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def run_tokenizer(tokenizer: VideoARTokenizer, video: torch.Tensor):
    latents = tokenizer.encode(video).latents
    quantized = tokenizer.quantize(latents)
    return latents, quantized.commitment_loss, tokenizer.decode(quantized.features).sample


def test_reconstruction_is_zero_only_for_identical_videos():
    video = random_video()
    assert all(loss == 0 for loss in reconstruction_losses(video, video.clone()))
    l1, l2 = reconstruction_losses(video, video + 0.5)
    assert l1.item() == pytest.approx(0.5) and l2.item() == pytest.approx(0.25)


def test_foreground_weight_counts_object_pixels_more():
    # one 2x2 red object on black, and an error of 0.5 on every pixel
    video = torch.full((1, 3, 1, 4, 4), -1.0)
    video[0, 0, 0, :2, :2] = 1
    mask = foreground_mask(video)
    assert mask.shape == (1, 1, 1, 4, 4) and mask.sum() == 4 and mask[0, 0, 0, :2, :2].all()
    reconstruction = video + 0.5
    l1, l2 = reconstruction_losses(video, reconstruction, foreground_weight=3.0)
    # 12 background pixels count once, 4 object pixels 1 + 3 times
    assert l1.item() == pytest.approx(0.5 * (12 + 4 * 4) / 16)
    assert l2.item() == pytest.approx(0.25 * (12 + 4 * 4) / 16)
    loss_fn = TokenizerLoss(foreground_weight=3.0, gan_weight=0.0)
    _, parts = loss_fn(video, reconstruction, torch.zeros(1, BITS, 1, 1, 1), torch.zeros(()), step=0)
    assert parts["l1"].item() == pytest.approx(l1.item()) and parts["l2"].item() == pytest.approx(l2.item())


def test_foreground_dilation_weighs_both_sides_of_the_edge():
    # a 2x2 red object in the first of two 6x6 frames, and a reconstruction that bleeds a one-pixel red halo around it
    video = torch.full((1, 3, 2, 6, 6), -1.0)
    video[0, 0, 0, 2:4, 2:4] = 1
    mask = foreground_mask(video, dilation=1)
    assert mask[0, 0, 0].sum() == 16 and mask[0, 0, 0, 1:5, 1:5].all(), "grown by one pixel on every side"
    assert mask[0, 0, 1].sum() == 0, "each frame is grown alone"
    halo = video.clone()
    halo[0, 0, 0, 1:5, 1:5] = 1
    plain, _ = reconstruction_losses(video, halo, foreground_weight=3.0)
    dilated, _ = reconstruction_losses(video, halo, foreground_weight=3.0, foreground_dilation=1)
    assert dilated.item() == pytest.approx(4 * plain.item()), "the halo costs 1 + 3 times, as falling short would"
    loss_fn = TokenizerLoss(foreground_weight=3.0, foreground_dilation=1, gan_weight=0.0)
    _, parts = loss_fn(video, halo, torch.zeros(1, BITS, 1, 1, 1), torch.zeros(()), step=0)
    assert parts["l1"].item() == pytest.approx(dilated.item())


def test_entropy_penalty_prefers_confident_balanced_bits():
    # 8 tokens; each bit is +-1 / sqrt(d), with every bit positive in exactly half of the tokens
    signs_Nd = torch.tensor([[(n >> (i % 3)) & 1 for i in range(BITS)] for n in range(8)]) * 2.0 - 1
    confident_balanced = (signs_Nd / math.sqrt(BITS)).T.reshape(1, BITS, 2, 2, 2)
    unconfident = confident_balanced * 1e-4
    confident_collapsed = confident_balanced.abs()

    for normalize in (True, False):
        penalty = bit_entropy_penalty(confident_balanced, normalize=normalize)
        # certain bits, each set in half the tokens
        assert penalty.item() == pytest.approx(-BITS * math.log(2), abs=1e-3)
        collapsed = bit_entropy_penalty(confident_collapsed, normalize=normalize)
        assert collapsed.item() == pytest.approx(0.0, abs=1e-3), "one code for all"
    # unnormalized, small latents are unsure bits: H(token) = H(usage) = d ln 2; normalized, scale does not count
    assert bit_entropy_penalty(unconfident, normalize=False).item() == pytest.approx(0.0, abs=1e-3)
    assert bit_entropy_penalty(unconfident).item() == pytest.approx(-BITS * math.log(2), abs=1e-3)

    # saturated sigmoids still give finite values and gradients
    for normalize in (True, False):
        latents = (confident_balanced * 100).requires_grad_()
        bit_entropy_penalty(latents, normalize=normalize).backward()
        assert torch.isfinite(latents.grad).all()


def test_normalized_entropy_penalty_ignores_the_latents_scale():
    latents = torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    scales = (0.01, 0.1, 1.0, 10.0)
    normalized = [bit_entropy_penalty(latents * s).item() for s in scales]
    assert max(normalized) - min(normalized) < 1e-5, normalized
    raw = [bit_entropy_penalty(latents * s, normalize=False).item() for s in scales]
    assert raw[0] > raw[1] > raw[2] > raw[3], "unnormalized, growing latents alone lower the penalty"
    assert raw[0] - raw[-1] > 5


def test_entropy_penalty_by_hand():
    # d = 2; two tokens (3, 4) and (0, -2), the first of two positions; inverse temperature 1, gamma 0.5
    latents = torch.tensor([[3.0, 0.0], [4.0, -2.0]]).reshape(1, 2, 1, 1, 2)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    def binary_entropy(p: float) -> float:
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    def penalty(tokens: list[tuple[float, float]]) -> float:
        probs = [[sigmoid(4 / math.sqrt(2) * u) for u in token] for token in tokens]
        token_entropy = sum(sum(binary_entropy(p) for p in token) for token in probs) / len(probs)
        usage_entropy = sum(binary_entropy((probs[0][i] + probs[1][i]) / 2) for i in range(2))
        return token_entropy - 0.5 * usage_entropy

    normalized = penalty([(3 / 5, 4 / 5), (0.0, -1.0)])  # each token over its length: 5 and 2
    raw = penalty([(3.0, 4.0), (0.0, -2.0)])
    assert bit_entropy_penalty(latents, gamma=0.5, inv_temperature=1.0).item() == pytest.approx(normalized, rel=1e-5)
    got_raw = bit_entropy_penalty(latents, gamma=0.5, inv_temperature=1.0, normalize=False).item()
    assert got_raw == pytest.approx(raw, rel=1e-5)


@pytest.mark.parametrize("normalize", (True, False))
def test_tokenizer_loss_passes_entropy_normalize(normalize):
    latents = torch.randn(1, BITS, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 0.01
    video = random_video(num_frames=1)
    loss_fn = TokenizerLoss(entropy_normalize=normalize, gan_weight=0.0)
    _, parts = loss_fn(video, video, latents, torch.zeros(()), step=0)
    expected = bit_entropy_penalty(latents, normalize=normalize)
    assert parts["entropy"].item() == pytest.approx(expected.item())
    assert TokenizerLoss().entropy_normalize, "Infinity's normalization is the default"


@pytest.mark.parametrize(
    "backbone",
    [
        lambda: ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")),
        lambda: ConvNextModel(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])),
    ],
    ids=["resnet", "convnext"],
)
def test_perceptual_distance(tmp_path, backbone):
    torch.manual_seed(0)
    backbone().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    perceptual = PerceptualLoss.from_pretrained(tmp_path).train()
    assert not perceptual.backbone.training, "the frozen backbone stays in eval mode"

    video = random_video()
    reconstruction = (video + 0.3 * torch.randn_like(video)).requires_grad_()
    assert perceptual(video, video.clone()).item() == pytest.approx(0.0, abs=1e-6)
    distance = perceptual(video, reconstruction)
    assert torch.isfinite(distance) and distance > 0
    distance.backward()
    assert reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.backbone.parameters())


def test_hinge_losses():
    separated = hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))
    undecided = hinge_discriminator_loss(torch.zeros(4), torch.zeros(4))
    fooled = hinge_discriminator_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))
    assert separated == 0 and undecided == 2 and fooled == 4
    assert hinge_generator_loss(torch.tensor([1.0, 3.0])) == -2


def test_lecam_tracks_the_logits_and_penalizes_the_distance_to_them():
    lecam = LeCAMRegularizer(decay=0.9)
    real, fake = torch.ones(3), -torch.ones(3)
    reg = lecam(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.1) and lecam.ema_fake.item() == pytest.approx(-0.1)
    assert reg.item() == pytest.approx(2 * 1.1**2)
    lecam.eval()
    lecam(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.1), "no update outside training"
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}


def test_gan_terms_are_skipped_before_gan_start_step():
    tokenizer, discriminator = tiny_tokenizer(), tiny_discriminator()
    calls = []
    discriminator.register_forward_hook(lambda *_: calls.append(1))
    loss_fn = TokenizerLoss(gan_start_step=3)
    video = random_video()
    latents, commitment, reconstruction = run_tokenizer(tokenizer, video)

    assert not loss_fn.gan_active(2)
    _, parts = loss_fn(video, reconstruction, latents, commitment, step=2, discriminator=discriminator)
    assert parts["gan"] == 0 and calls == [], "the discriminator is not even run"
    with pytest.raises(ValueError, match="`discriminator`"):
        loss_fn(video, reconstruction, latents, commitment, step=3)

    assert loss_fn.gan_active(3)
    _, parts = loss_fn(video, reconstruction, latents, commitment, step=3, discriminator=discriminator)
    assert parts["gan"] != 0 and calls == [1]


def test_discriminator_steps_lower_its_loss():
    discriminator, loss_fn = tiny_discriminator(), TokenizerLoss(lecam_decay=0.9)
    real, fake = random_video(seed=1), random_video(seed=2).sign()
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss, parts = loss_fn.discriminator_loss(discriminator, real, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert parts["logits_real"] > parts["logits_fake"]
    assert loss_fn.lecam.ema_real != 0 and loss_fn.lecam.ema_fake != 0


def test_total_loss_reaches_encoder_and_decoder(tmp_path):
    torch.manual_seed(0)
    backbone = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic"))
    backbone.save_pretrained(tmp_path)
    loss_fn = TokenizerLoss(perceptual=PerceptualLoss.from_pretrained(tmp_path))
    tokenizer, discriminator = tiny_tokenizer(), tiny_discriminator()
    video = random_video()
    latents, commitment, reconstruction = run_tokenizer(tokenizer, video)

    loss, parts = loss_fn(video, reconstruction, latents, commitment, step=0, discriminator=discriminator)
    assert set(parts) == {"l1", "l2", "perceptual", "commitment", "entropy", "gan"}
    assert all(torch.isfinite(value) for value in parts.values())
    expected = sum(loss_fn.weights[name] * value for name, value in parts.items())
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    for conv in (tokenizer.encoder.conv_in.conv, tokenizer.decoder.conv_out.conv):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_ten_training_steps_lower_the_loss():
    tokenizer, loss_fn = tiny_tokenizer(), TokenizerLoss(gan_weight=0.0)
    # smooth, unlike white noise, so that ten steps can learn something
    coarse = torch.rand(1, 3, 5, 2, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video = F.interpolate(coarse, size=(5, 16, 16), mode="trilinear")
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=2e-3)
    losses = []
    for step in range(10):
        latents, commitment, reconstruction = run_tokenizer(tokenizer, video)
        loss, parts = loss_fn(video, reconstruction, latents, commitment, step)
        assert "perceptual" not in parts and parts["gan"] == 0  # no perceptual network, no GAN
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((2, 3, 5, 32, 32), (2, 1, 1, 4, 4)),
        ((1, 3, 1, 16, 16), (1, 1, 1, 2, 2)),
        ((1, 3, 17, 64, 48), (1, 1, 3, 8, 6)),
    ],
)
def test_discriminator_output_shape(shape, expected):
    with torch.no_grad():
        assert tiny_discriminator()(torch.zeros(shape)).shape == expected
