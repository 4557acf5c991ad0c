"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-28-10 by default: the backbone of S2M2 / LEO-style few-shot work.

Pre-activation basic blocks (BN-ReLU-conv3x3 twice), three groups of (depth-4)/6
blocks with widths 16k, 32k, 64k (k = ``widen_factor``) and strides 1, 2, 2, then
BN-ReLU and global average pooling: 640 features for WRN-28-10. Dropout between the
two convs of a block (``drop_rate``) needs ``randomness="different"`` under
``torch.func.vmap``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_backbones.base import Backbone, finish


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(Backbone):
    input_conv = "conv1.weight"

    def __init__(self, channels: int, depth: int, widen_factor: int, drop_rate: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        blocks, cin = [], widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(WideBlock(cin, width, stride if i == 0 else 1, drop_rate))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.out_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(x))
        return F.relu(self.bn(x)).mean(dim=(-2, -1))


@metareg.pretraining_options
def wrn28(
    *,
    channels: int = 3,
    image_size: int = 84,
    depth: int = 28,
    widen_factor: int = 10,
    drop_rate: float = 0.0,
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """Wide ResNet WRN-28-10: pre-activation blocks, widths 160-320-640, 640-d average-pooled features.

    depth: total depth, 6n+4 (28: four blocks per group; 16 and 10 are smaller variants).
    widen_factor: width multiplier k (10: 640 features; 2 is a cheap variant with 128).
    drop_rate: dropout between the two convs of each block (0 to disable); needs randomness="different" under vmap.
    """
    if depth < 10 or (depth - 4) % 6:
        raise metareg.OptionError(f"wrn28: depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    if widen_factor < 1:
        raise metareg.OptionError(f"wrn28: widen_factor must be >= 1, got {widen_factor}")
    if not 0.0 <= drop_rate < 1.0:
        raise metareg.OptionError(f"wrn28: drop_rate must be in [0, 1), got {drop_rate}")
    model = WideResNet(channels, depth, widen_factor, drop_rate)
    return finish(model, name="wrn28", pretraining=pretraining)
