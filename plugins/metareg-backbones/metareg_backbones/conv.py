"""Conv-4 (Vinyals et al. 2016; Snell et al. 2017): the standard few-shot backbone."""
from __future__ import annotations

import torch
from torch import nn

import metareg


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    def __init__(self, channels: int, image_size: int, hidden: int, layers: int, pooled: bool):
        super().__init__()
        blocks, cin, size = [], channels, image_size
        for _ in range(layers):
            pool = size >= 2
            blocks.append(_block(cin, hidden, pool))
            cin, size = hidden, size // 2 if pool else size
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooled else nn.Identity()
        self.out_features = hidden if pooled else hidden * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def conv4(*, channels: int = 3, image_size: int = 84, hidden: int = 64, layers: int = 4, pooled: bool = False) -> nn.Module:
    """Conv-4 backbone: `layers` blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool.

    hidden: filters per conv layer (64 is the few-shot standard).
    layers: number of conv blocks.
    pooled: average-pool the last feature map to `hidden` features instead of flattening it
        (flattened: 64 features on 28x28 Omniglot, 1600 on 84x84 miniImageNet).
    """
    if hidden < 1 or layers < 1:
        raise metareg.OptionError(f"conv4: hidden and layers must be positive, got hidden={hidden}, layers={layers}")
    return Conv4(channels, image_size, hidden, layers, pooled)

