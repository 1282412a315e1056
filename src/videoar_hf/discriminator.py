"""The tokenizer's adversary (docs/method.md §2: GAN loss with LeCAM): a small 3D PatchGAN over whole clips."""

import torch
from torch import nn


class Discriminator3D(nn.Module):
    """Video `(B, in_channels, T, H, W)` -> patch logits `(B, 1, T', H', W')`, each judging one space-time patch.

    `num_layers` stride-2 stages (Conv3d, then GroupNorm and LeakyReLU), each halving time and space, rounding up, and
    doubling the width up to `8 * base_channels`; a last 3x3x3 conv gives the logits. It sees whole clips, so it need
    not be causal.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm_num_groups: int = 32):
        super().__init__()
        layers = [nn.Conv3d(in_channels, base_channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for i in range(1, num_layers):
            out_channels = base_channels * min(2**i, 8)
            layers += [
                # the norm's shift makes a conv bias redundant
                nn.Conv3d(channels, out_channels, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(norm_num_groups, out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv3d(channels, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.layers(video_BCTHW)
