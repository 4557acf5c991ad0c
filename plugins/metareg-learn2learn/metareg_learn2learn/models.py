"""learn2learn's vision models (CNN4, ResNet-12, WRN-28) as metareg backbones."""
from __future__ import annotations

import torch
from torch import nn

import metareg

from ._l2l import learn2learn


class L2LBackbone(nn.Module):
    """Wraps a learn2learn trunk: flattens its output and records ``out_features``.

    Trunks that only take RGB (WRN-28) get grayscale images repeated to 3 channels.
    """

    def __init__(self, trunk: nn.Module, channels: int, image_size: int, rgb_only: bool = False):
        super().__init__()
        self.trunk = trunk
        self.repeat = 3 if rgb_only and channels == 1 else 1
        was_training = trunk.training
        trunk.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, channels, image_size, image_size))
        trunk.train(was_training)
        self.out_features = int(probe.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        return self.trunk(x).flatten(1)


def _check_rgb(name: str, channels: int) -> None:
    if channels not in (1, 3):
        raise metareg.OptionError(f"{name}: images must have 1 or 3 channels, got {channels}")


def cnn4(
    *, channels: int = 3, image_size: int = 84, hidden_size: int = 64, layers: int = 4, max_pool: bool = True
) -> nn.Module:
    """learn2learn's CNN4Backbone: `layers` conv-BN-ReLU blocks with max-pooling, features flattened.

    hidden_size: filters per conv layer.
    layers: number of conv blocks.
    max_pool: down-sample with 2x2 max-pooling (false: strided convolutions, as in MAML's Omniglot net).
    """
    if hidden_size < 1 or layers < 1:
        raise metareg.OptionError(f"l2l-cnn4: hidden_size and layers must be positive, got {hidden_size}, {layers}")
    _check_rgb("l2l-cnn4", channels)
    trunk = learn2learn().vision.models.CNN4Backbone(
        hidden_size=hidden_size, layers=layers, channels=channels, max_pool=max_pool
    )
    return L2LBackbone(trunk, channels, image_size)


def resnet12(
    *,
    channels: int = 3,
    image_size: int = 84,
    wider: bool = True,
    avg_pool: bool = True,
    dropblock_dropout: float = 0.1,
    dropblock_size: int = 5,
    embedding_dropout: float = 0.0,
) -> nn.Module:
    """learn2learn's ResNet12Backbone (MetaOptNet's ResNet-12 with DropBlock).

    wider: widths 64-160-320-640 (true, 640 features) or 64-128-256-512 (false).
    avg_pool: average-pool the last feature map (false: flatten it).
    dropblock_dropout: DropBlock drop rate in the last two stages (0 disables it).
    dropblock_size: DropBlock square size.
    embedding_dropout: dropout on the output features.
    """
    for opt, value in (("dropblock_dropout", dropblock_dropout), ("embedding_dropout", embedding_dropout)):
        if not 0 <= value < 1:
            raise metareg.OptionError(f"l2l-resnet12: {opt} must be in [0, 1), got {value}")
    _check_rgb("l2l-resnet12", channels)
    if dropblock_dropout > 0 and image_size // 16 < dropblock_size:
        raise metareg.OptionError(
            f"l2l-resnet12: learn2learn's DropBlock needs a last feature map of at least dropblock_size="
            f"{dropblock_size} pixels, but {image_size}-pixel images give {image_size // 16}; set "
            f"--backbone-opt dropblock_dropout=0 (or dropblock_size<={max(image_size // 16, 1)}) for small images"
        )
    trunk = learn2learn().vision.models.ResNet12Backbone(
        avg_pool=avg_pool,
        wider=wider,
        embedding_dropout=embedding_dropout,
        dropblock_dropout=dropblock_dropout,
        dropblock_size=dropblock_size,
        channels=channels,
    )
    if avg_pool:  # learn2learn pools a fixed 5x5 window (84-pixel inputs); adaptive pooling is the same there
        trunk.avgpool = nn.AdaptiveAvgPool2d(1)
    return L2LBackbone(trunk, channels, image_size)


def wrn28(*, channels: int = 3, image_size: int = 84, dropout: float = 0.0) -> nn.Module:
    """learn2learn's WRN28Backbone (WRN-28-10, 640 features at 84 pixels); grayscale images are repeated to RGB.

    dropout: dropout rate inside the residual blocks.
    """
    if not 0 <= dropout < 1:
        raise metareg.OptionError(f"l2l-wrn28: dropout must be in [0, 1), got {dropout}")
    _check_rgb("l2l-wrn28", channels)
    if image_size < 84:
        raise metareg.OptionError(
            f"l2l-wrn28: learn2learn's WRN-28 pools a fixed 21x21 window and needs images of at least 84 pixels, "
            f"got {image_size}; use a dataset with image_size >= 84 (e.g. --dataset-opt image_size=84) or another "
            "backbone (wrn28 from metareg-backbones takes any size)"
        )
    trunk = learn2learn().vision.models.WRN28Backbone(dropout=dropout)
    return L2LBackbone(trunk, channels, image_size, rgb_only=True)
