import torch
from torch import nn

import metareg


class Invert(metareg.Transform):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, images):
        flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < self.p
        return torch.where(flip, 1 - images, images)


def invert(*, channels: int = 1, image_size: int = 28, p: float = 0.5) -> metareg.Transform:
    """Invert intensities (x -> 1 - x) of each training image with probability p.

    p: probability of inverting an image.
    """
    if not 0 <= p <= 1:
        raise metareg.OptionError(f"invert: p must lie in [0, 1], got {p}")
    return Invert(p)


def mlp(*, channels: int = 1, image_size: int = 28, hidden: int = 64) -> nn.Module:
    """Flatten, Linear, ReLU, Linear.

    hidden: width of both layers (and the feature size).
    """
    net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size * image_size, hidden), nn.ReLU(),
                        nn.Linear(hidden, hidden))
    net.out_features = hidden
    return net
