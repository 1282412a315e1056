"""The video tokenizer's training objective (docs/method.md §2): reconstruction, perceptual, GAN with LeCAM, commitment and
BSQ entropy penalty, per frame.

The paper gives no weights: `TokenizerLoss`'s defaults are ours, each taken from the work its term comes from.
Shapes: videos are `(B, C, T, H, W)` in [-1, 1], latents `(B, d, T', h, w)`.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# a saturated sigmoid rounds to exactly 0 or 1, where the entropy's log has no finite gradient
_PROBABILITY_EPS = 1e-6


def foreground_mask(video_BCTHW: torch.Tensor, tolerance: float = 1 / 255, dilation: int = 0) -> torch.Tensor:
    """`(B, 1, T, H, W)`, 1 where a pixel's colour differs from its frame's per-channel median colour (its background),
    grown by `dilation` pixels in each frame."""
    median_BCT11 = video_BCTHW.flatten(3).median(dim=3).values[..., None, None]
    mask = ((video_BCTHW - median_BCT11).abs() > tolerance).any(dim=1, keepdim=True).to(video_BCTHW.dtype)
    if dilation == 0:
        return mask
    size = 2 * dilation + 1
    return F.max_pool3d(mask, (1, size, size), stride=1, padding=(0, dilation, dilation))


def reconstruction_losses(
    video: torch.Tensor, reconstruction: torch.Tensor, foreground_weight: float = 0.0, foreground_dilation: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute and mean squared error over every pixel of every frame.

    With `foreground_weight > 0`, a pixel of `foreground_mask(video, dilation=foreground_dilation)` counts
    `1 + foreground_weight` times: for sparse content (one object on a plain background), where the background
    otherwise dominates the mean and the object is learned slowly. Without dilation the weight is lopsided at the
    object's edge (bleeding outward costs less than falling short), so the decoder draws a halo that rounds corners;
    a dilation of a pixel or two weighs both sides of the edge alike.
    """
    error = reconstruction.float() - video.float()
    if foreground_weight == 0:
        return error.abs().mean(), error.pow(2).mean()
    weight = 1 + foreground_weight * foreground_mask(video.float(), dilation=foreground_dilation)
    return (weight * error.abs()).mean(), (weight * error.pow(2)).mean()


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bit_entropy_penalty(
    latents_BdTHW: torch.Tensor, gamma: float = 1.0, inv_temperature: float = 100.0, normalize: bool = True
) -> torch.Tensor:
    r"""BSQ's entropy penalty (Zhao et al. 2024, as in Infinity): each token's bits confident, all codes used evenly.

    A token is the d latent channels `v` at one position of one latent frame. With `normalize` (Infinity's BSQ) `v`
    is first scaled to unit length, `u = v / ||v||`; without it `u = v`. Soft BSQ assigns the token the code
    `c in {-1, 1}^d / sqrt(d)` with probability proportional to `exp(-inv_temperature * ||u - c||^2)`, which
    factorizes into independent bits: `p_i = P(bit i = 1 | v) = sigmoid(4 * inv_temperature * u_i / sqrt(d))`. With
    `H` the binary entropy in nats and the mean over the batch's tokens,

        penalty = mean_tokens sum_i H(p_i) - gamma * sum_i H(mean_tokens p_i)

    The first term is the mean entropy of a token's code (low: confident bits). The second is the entropy of the
    batch's average code distribution (high: balanced usage), factorized over bits as in BSQ: an upper bound on the
    joint entropy, equal to it when the bits are independent across the batch. The penalty lies in
    `[-gamma * d * ln 2, d * ln 2]`. Under data parallelism "the batch" is the global one: the average code is
    averaged over the processes too, so N processes train as one does.

    The codes lie on the unit sphere, so only a normalized `u` makes `inv_temperature` a fixed sharpness: then the
    penalty depends on the latents' directions alone, not on their scale. `normalize=False` is this project's
    earlier behaviour, where the penalty falls as the latents merely grow (every bit looks surer) without any code
    changing. Infinity applies the penalty to every scale's residual and averages over scales; here it sees the
    latents once, on the finest grid.
    """
    d = latents_BdTHW.shape[1]
    # in fp32: in bf16 the clamp below would round back to 0 or 1
    u_BdTHW = latents_BdTHW.float()
    if normalize:
        u_BdTHW = F.normalize(u_BdTHW, dim=1)
    p_BdTHW = torch.sigmoid(4 * inv_temperature / math.sqrt(d) * u_BdTHW)
    token_entropy = _binary_entropy(p_BdTHW).sum(dim=1).mean()
    usage_entropy = _binary_entropy(mean_over_processes(p_BdTHW.mean(dim=(0, 2, 3, 4)))).sum()
    return token_entropy - gamma * usage_entropy


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the processes of a data-parallel run, differentiable (every process's gradient reaches
    every other's share); `x` itself outside one. Processes must hold batches of one size."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x) / dist.get_world_size()


class PerceptualLoss(nn.Module):
    """LPIPS-style distance through a frozen transformers vision backbone, frame by frame.

    Every hidden state of the backbone is a feature layer: its channels are unit-normalized at each position, and the
    squared difference between video and reconstruction is summed over channels and averaged over positions and
    layers (LPIPS without its learned channel weights). Frames are folded into the batch. Inputs in [-1, 1] are mapped
    to [0, 1] and normalized with `image_mean` / `image_std` (ImageNet's by default, as most vision backbones expect),
    at the video's own resolution: convolutional backbones (ResNet, ConvNeXt) take any size.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        image_mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    ):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "PerceptualLoss":
        """Backbone from a transformers folder or Hub id, e.g. a ResNet; weights from safetensors only, never pickle."""
        return cls(AutoModel.from_pretrained(path, use_safetensors=True), **kwargs)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics, say, must not move
        return self

    def forward(self, video_BCTHW: torch.Tensor, reconstruction_BCTHW: torch.Tensor) -> torch.Tensor:
        # one backbone pass for both: frames of the video, then frames of the reconstruction
        both_NCHW = torch.cat([video_BCTHW, reconstruction_BCTHW]).transpose(1, 2).flatten(0, 1)
        pixels_NCHW = ((both_NCHW + 1) / 2 - self.image_mean) / self.image_std
        outputs = self.backbone(pixel_values=pixels_NCHW.to(self.backbone.dtype), output_hidden_states=True)
        distances = []
        for features in outputs.hidden_states:
            # conv feature maps are (N, C, H, W), token sequences (N, L, C)
            channel_dim = 1 if features.ndim == 4 else -1
            real, fake = F.normalize(features.float(), dim=channel_dim).chunk(2)
            distances.append((real - fake).pow(2).sum(dim=channel_dim).mean())
        return torch.stack(distances).mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


class LeCAMRegularizer(nn.Module):
    """LeCAM (Tseng et al. 2021): anchors the discriminator's logits to moving averages of its own logits.

    `reg = mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)`. In training mode each call first
    moves the EMAs of the mean real and fake logits (buffers, saved with the module) by `1 - decay`.
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.ema_real.lerp_(logits_real.mean().to(self.ema_real), 1 - self.decay)
                self.ema_fake.lerp_(logits_fake.mean().to(self.ema_fake), 1 - self.decay)
        return F.relu(logits_real - self.ema_fake).pow(2).mean() + F.relu(self.ema_real - logits_fake).pow(2).mean()


class TokenizerLoss(nn.Module):
    r"""The tokenizer's objective, generator side (`forward`) and discriminator side (`discriminator_loss`).

    Generator: `l1 + l2 + perceptual + commitment + entropy + gan`, each times its weight. `gan = -mean(D(x_hat))`
    counts from `gan_start_step` on (`gan_weight=0` turns the GAN off); before, it is exactly zero and the
    discriminator is not run. Discriminator: `hinge(D(x), D(x_hat)) + lecam_weight * LeCAM`, trained only while
    `gan_active(step)`.

    Args:
        l1_weight, l2_weight (`float`, defaults to 1.0 each): reconstruction; our choice.
        foreground_weight (`float`, defaults to 0.0): extra reconstruction weight on foreground pixels, see
            `reconstruction_losses`; ours, for sparse data such as Shapes.
        foreground_dilation (`int`, defaults to 0): pixels by which the weighted foreground reaches past the object's
            edge, see `reconstruction_losses`; ours.
        perceptual (`PerceptualLoss`, *optional*): the LPIPS feature network; without one there is no perceptual term.
        perceptual_weight (`float`, defaults to 0.1): MAGVIT-v2's.
        commitment_weight (`float`, defaults to 0.25): VQ-VAE's and BSQ's beta.
        entropy_weight (`float`, defaults to 0.01), entropy_gamma (`float`, defaults to 1.0),
            entropy_inv_temperature (`float`, defaults to 100.0): Infinity's BSQ, which adds the penalty divided by
            its inverse temperature 100.
        entropy_normalize (`bool`, defaults to True): unit-normalize each token's latent vector before the soft
            quantization of the entropy penalty, as Infinity's BSQ does; False is the earlier, scale-dependent
            penalty (see `bit_entropy_penalty`).
        gan_weight (`float`, defaults to 0.1): MAGVIT-v2's generator weight.
        lecam_weight (`float`, defaults to 0.001), lecam_decay (`float`, defaults to 0.999): MAGVIT-v2's.
        gan_start_step (`int`, defaults to 0): the first step with GAN terms; a later one lets the autoencoder warm up.

    One training step:
    ```python
    latents = tokenizer.encode(video).latents
    quantized = tokenizer.quantize(latents)
    reconstruction = tokenizer.decode(quantized.features).sample
    loss, parts = loss_fn(video, reconstruction, latents, quantized.commitment_loss, step, discriminator)
    ...  # backward, tokenizer optimizer step
    if loss_fn.gan_active(step):
        d_loss, d_parts = loss_fn.discriminator_loss(discriminator, video, reconstruction)
        ...  # backward, discriminator optimizer step
    ```
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        foreground_weight: float = 0.0,
        foreground_dilation: int = 0,
        perceptual: PerceptualLoss | None = None,
        perceptual_weight: float = 0.1,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.01,
        entropy_gamma: float = 1.0,
        entropy_inv_temperature: float = 100.0,
        entropy_normalize: bool = True,
        gan_weight: float = 0.1,
        lecam_weight: float = 0.001,
        lecam_decay: float = 0.999,
        gan_start_step: int = 0,
    ):
        super().__init__()
        self.weights = dict(
            l1=l1_weight,
            l2=l2_weight,
            perceptual=perceptual_weight,
            commitment=commitment_weight,
            entropy=entropy_weight,
            gan=gan_weight,
            lecam=lecam_weight,
        )
        self.foreground_weight = foreground_weight
        self.foreground_dilation = foreground_dilation
        self.perceptual = perceptual
        self.entropy_gamma = entropy_gamma
        self.entropy_inv_temperature = entropy_inv_temperature
        self.entropy_normalize = entropy_normalize
        self.lecam = LeCAMRegularizer(lecam_decay)
        self.gan_start_step = gan_start_step

    def gan_active(self, step: int) -> bool:
        """Whether `step` trains the discriminator and gives the generator its GAN term; never with `gan_weight=0`."""
        return self.weights["gan"] > 0 and step >= self.gan_start_step

    def forward(
        self,
        video: torch.Tensor,
        reconstruction: torch.Tensor,
        latents: torch.Tensor,
        commitment_loss: torch.Tensor,
        step: int,
        discriminator: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's total loss and its unweighted parts, detached, for logging.

        `latents` are the encoder's continuous output (`tokenizer.encode(video).latents`), `commitment_loss` is
        `tokenizer.quantize(latents).commitment_loss`; `discriminator` is needed once `gan_active(step)`.
        """
        l1, l2 = reconstruction_losses(video, reconstruction, self.foreground_weight, self.foreground_dilation)
        parts = {
            "l1": l1,
            "l2": l2,
            "commitment": commitment_loss,
            "entropy": bit_entropy_penalty(
                latents, self.entropy_gamma, self.entropy_inv_temperature, self.entropy_normalize
            ),
            "gan": self._generator_gan_loss(reconstruction, step, discriminator),
        }
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(video, reconstruction)
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def _generator_gan_loss(
        self, reconstruction: torch.Tensor, step: int, discriminator: nn.Module | None
    ) -> torch.Tensor:
        if not self.gan_active(step):
            return reconstruction.new_zeros(())
        if discriminator is None:
            raise ValueError(f"`discriminator` is needed from `gan_start_step` ({self.gan_start_step}) on, at {step}.")
        return hinge_generator_loss(discriminator(reconstruction))

    def discriminator_loss(
        self, discriminator: nn.Module, video: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss plus LeCAM for one discriminator step, and its parts, detached; `reconstruction` is detached."""
        logits_real = discriminator(video)
        logits_fake = discriminator(reconstruction.detach())
        parts = {
            "hinge": hinge_discriminator_loss(logits_real, logits_fake),
            "lecam": self.lecam(logits_real, logits_fake),
        }
        total = parts["hinge"] + self.weights["lecam"] * parts["lecam"]
        parts |= {"logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return total, {name: value.detach() for name, value in parts.items()}
