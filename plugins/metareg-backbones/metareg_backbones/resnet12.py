"""ResNet-12 of MetaOptNet (Lee et al. 2019), the few-shot standard after Conv-4.

Four residual blocks, each three 3x3 conv-BN-LeakyReLU(0.1) layers (the last
activation after the shortcut sum; the shortcut is a 1x1 conv + BN), followed by a
2x2 max-pool; widths 64-160-320-640. Features are the globally average-pooled last
map (640 values); ``pooled=false`` flattens it instead (16000 values on 84x84, as
MetaOptNet's SVM head used).

Regularisation as in MetaOptNet: with ``drop_rate > 0`` the last two blocks use
DropBlock (Ghiasi et al. 2018) and the first two plain dropout. MetaOptNet ramps the
DropBlock rate up over training; here the rate is constant.

DropBlock and dropout draw random numbers in training mode, so under
``torch.func.vmap`` (MAML's batched inner loop) they need
``vmap(..., randomness="different")`` (independent masks per task) or ``"same"``;
vmap's default ``randomness="error"`` refuses them. With ``drop_rate=0`` (the
default) the network draws nothing and any randomness setting works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_backbones.base import Backbone, finish


class DropBlock(nn.Module):
    """Drops contiguous ``block_size`` x ``block_size`` squares of each feature map in training.

    Expected fraction dropped is ``drop_rate``; kept activations are rescaled so the
    expected sum is unchanged. Works per sample, so it is vmap-safe (given a
    randomness mode) and needs no knowledge of the batch size.
    """

    def __init__(self, drop_rate: float, block_size: int):
        super().__init__()
        self.drop_rate = drop_rate
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate <= 0:
            return x
        h, w = x.shape[-2:]
        bs = min(self.block_size, h, w)
        # Seed probability so that, after growing each seed into a bs x bs block, about drop_rate is dropped.
        gamma = self.drop_rate / (bs * bs) * (h * w) / ((h - bs + 1) * (w - bs + 1))
        seeds = (torch.rand_like(x[..., : h - bs + 1, : w - bs + 1]) < gamma).to(x.dtype)
        # Grow each seed into the bs x bs square below-right of it: pad bs-1 on every side, max-pool, back to h x w.
        pad = bs - 1
        dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), kernel_size=bs, stride=1)
        keep = 1.0 - dropped
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        return x * keep * scale


class ResBlock12(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool, drop: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut(x), 0.1)
        return self.drop(self.pool(out))


class ResNet12(Backbone):
    input_conv = "blocks.0.conv1.weight"

    def __init__(
        self,
        channels: int,
        image_size: int,
        widths: tuple[int, ...] = (64, 160, 320, 640),
        pooled: bool = True,
        drop_rate: float = 0.0,
        drop_block: bool = True,
        block_size: int = 5,
    ):
        super().__init__()
        blocks, cin, size = [], channels, image_size
        n = len(widths)
        for i, width in enumerate(widths):
            pool = size >= 2
            if drop_rate > 0 and drop_block and i >= n - 2:
                drop: nn.Module = DropBlock(drop_rate, block_size)
            elif drop_rate > 0:
                drop = nn.Dropout(drop_rate)
            else:
                drop = nn.Identity()
            blocks.append(ResBlock12(cin, width, pool, drop))
            cin, size = width, size // 2 if pool else size
        self.blocks = nn.Sequential(*blocks)
        self.pooled = pooled
        self.out_features = cin if pooled else cin * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        return x.mean(dim=(-2, -1)) if self.pooled else x.flatten(1)


@metareg.pretraining_options
def resnet12(
    *,
    channels: int = 3,
    image_size: int = 84,
    widths: tuple[int, ...] = (64, 160, 320, 640),
    pooled: bool = True,
    drop_rate: float = 0.0,
    drop_block: bool = True,
    block_size: int = 5,
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """ResNet-12 (MetaOptNet, Lee et al. 2019): 4 residual blocks of 3 conv3x3-BN-LeakyReLU, 640-d features.

    widths: output channels of the residual blocks (64,160,320,640 in MetaOptNet; 64,128,256,512 is another common one).
    pooled: average the last feature map (640 features) instead of flattening it (640*5*5 on 84x84).
    drop_rate: regularisation strength, 0 to disable (MetaOptNet used 0.1): DropBlock in the last two blocks
        and dropout in the first two. Under torch.func.vmap it needs randomness="different" or "same".
    drop_block: use DropBlock in the last two blocks (false: plain dropout everywhere).
    block_size: DropBlock square size (5 in MetaOptNet; clipped to the feature map).
    """
    widths = tuple(widths)
    if not widths or any(int(w) < 1 for w in widths):
        raise metareg.OptionError(f"resnet12: widths must be a non-empty list of positive integers, got {widths}")
    if not 0.0 <= drop_rate < 1.0:
        raise metareg.OptionError(f"resnet12: drop_rate must be in [0, 1), got {drop_rate}")
    if block_size < 1:
        raise metareg.OptionError(f"resnet12: block_size must be >= 1, got {block_size}")
    model = ResNet12(channels, image_size, tuple(int(w) for w in widths), pooled, drop_rate, drop_block, block_size)
    return finish(model, name="resnet12", pretraining=pretraining)
