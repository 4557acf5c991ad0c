"""Conv-4 (Vinyals et al. 2016; Snell et al. 2017): the standard few-shot backbone.

Two variants:

* ``conv4``: blocks of 3x3 conv, BatchNorm, ReLU and 2x2 max-pool; the flattened
  last map is the feature vector (64 features on 28x28 Omniglot, 1600 on 84x84).
* ``conv4-omniglot``: the Omniglot network of MAML (Finn et al. 2017): stride-2
  convolutions instead of max-pooling and the last map averaged to 64 features.
  ``conv4`` with ``downsample=stride pooled=true`` is the same network.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

import metareg
from metareg_backbones.base import Backbone, finish


def _block(cin: int, cout: int, downsample: str | None) -> nn.Sequential:
    stride = 2 if downsample == "stride" else 1
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]
    if downsample == "maxpool":
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(Backbone):
    input_conv = "features.0.0.weight"

    def __init__(
        self, channels: int, image_size: int, hidden: int, layers: int, pooled: bool, downsample: str = "maxpool"
    ):
        super().__init__()
        blocks, cin, size = [], channels, image_size
        for _ in range(layers):
            # Stop shrinking once the map is 1 pixel wide, so any depth fits any image size.
            down = downsample if size >= 2 else None
            blocks.append(_block(cin, hidden, down))
            if down == "maxpool":
                size //= 2
            elif down == "stride":
                size = (size + 1) // 2
            cin = hidden
        self.features = nn.Sequential(*blocks)
        self.pooled = pooled
        self.out_features = hidden if pooled else hidden * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # A plain mean, not nn.AdaptiveAvgPool2d: under torch.func.vmap (MAML's inner loop) the
        # adaptive pool has no batching rule and falls back to a slow per-episode loop.
        return x.mean((2, 3)) if self.pooled else x.flatten(1)


@metareg.pretraining_options
def conv4(
    *,
    channels: int = 3,
    image_size: int = 84,
    hidden: int = 64,
    layers: int = 4,
    pooled: bool = False,
    downsample: Literal["maxpool", "stride"] = "maxpool",
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """Conv-4 backbone: `layers` blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool.

    hidden: filters per conv layer (64 is the few-shot standard).
    layers: number of conv blocks.
    pooled: average-pool the last feature map to `hidden` features instead of flattening it
        (flattened: 64 features on 28x28 Omniglot, 1600 on 84x84 miniImageNet).
    downsample: how each block halves the map: 2x2 max-pool (ProtoNets) or a stride-2 conv (MAML's Omniglot net).
    """
    if hidden < 1 or layers < 1:
        raise metareg.OptionError(f"conv4: hidden and layers must be positive, got hidden={hidden}, layers={layers}")
    if downsample not in ("maxpool", "stride"):
        raise metareg.OptionError(f"conv4: downsample must be maxpool or stride, got {downsample!r}")
    model = Conv4(channels, image_size, hidden, layers, pooled, downsample)
    return finish(model, name="conv4", pretraining=pretraining)


@metareg.pretraining_options
def conv4_omniglot(
    *,
    channels: int = 1,
    image_size: int = 28,
    hidden: int = 64,
    layers: int = 4,
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """MAML's Omniglot Conv-4: stride-2 3x3 convs with batch norm and ReLU, last map averaged to `hidden` features.

    hidden: filters per conv layer (64 in MAML).
    layers: number of conv blocks.
    """
    if hidden < 1 or layers < 1:
        raise metareg.OptionError(
            f"conv4-omniglot: hidden and layers must be positive, got hidden={hidden}, layers={layers}"
        )
    model = Conv4(channels, image_size, hidden, layers, pooled=True, downsample="stride")
    return finish(model, name="conv4-omniglot", pretraining=pretraining)
