"""The Transform contract (batched augmentation on the device), and the core's own transform, ``none``."""
from __future__ import annotations

import torch
from torch import nn


class Transform(nn.Module):
    """``forward`` augments a ``(N, C, H, W)`` float batch in ``[0, 1]`` during training;
    ``evaluate`` prepares validation, test and prediction batches. Both must keep the
    batch on its device and return the same shape for every call of a run."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        return images


def identity(*, channels: int = 3, image_size: int = 84) -> Transform:
    """No augmentation for training, nothing for evaluation either."""
    return Transform()
