"""Cross-Frame Error Correction (docs/method.md §5). Training only: inference never imports this module.

Bits are flipped at a time-dependent rate while the pyramid is built, and every later target is recomputed against
the corrupted history, so the transformer learns to repair the errors it will meet when it samples frame after frame.
"""

import torch

from .configuration_videoar import VideoARConfig
from .quantizer import MultiScaleBitwiseQuantizer, ResidualQuantization
from .sampling import uniform_noise


def sample_flip_rates(
    batch_size: int,
    num_frames: int,
    num_scales: int,
    rate_min: float = 0.0,
    rate_max: float = 0.25,
    delta: float = 0.01,
    inheritance: bool = True,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Flip rate of every (sample, frame, scale), `(B, T, K)`.

    Frame t draws `p ~ U(rate_min + delta*t, rate_max + delta*t)` per scale; with `inheritance`, its first scale draws
    `p ~ U(p_prev_last, rate_max + delta*t)` where `p_prev_last` is the rate of frame t-1's last scale.
    """
    uniform_BTK = uniform_noise((batch_size, num_frames, num_scales), generator, "cpu")
    rates_BTK = torch.empty_like(uniform_BTK)
    for t in range(num_frames):
        low, high = rate_min + delta * t, rate_max + delta * t
        rates_BTK[:, t] = low + (high - low) * uniform_BTK[:, t]
        if inheritance and t > 0:
            inherited_low_B = rates_BTK[:, t - 1, -1]
            rates_BTK[:, t, 0] = inherited_low_B + (high - inherited_low_B) * uniform_BTK[:, t, 0]
    return rates_BTK


def error_corrected_pyramid(
    quantizer: MultiScaleBitwiseQuantizer,
    latents_BdTHW: torch.Tensor,
    scale_sizes: list[tuple[int, int]],
    config: VideoARConfig,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> ResidualQuantization:
    """Transformer inputs and targets for one training clip, with error correction when `config.error_correction`.
    `generator` may be one per sample, so a sample draws the same flips in any batch."""
    flip_rates_BTK = None
    if config.error_correction:
        B, _, T = latents_BdTHW.shape[:3]
        flip_rates_BTK = sample_flip_rates(
            B,
            T,
            len(scale_sizes),
            config.flip_rate_min,
            config.flip_rate_max,
            config.flip_rate_delta,
            config.flip_rate_inheritance,
            generator=generator,
        )
    return quantizer.residual_quantize(latents_BdTHW, scale_sizes, flip_rates_BTK, generator=generator)
