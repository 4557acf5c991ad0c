"""Synthetic inputs for checks: a one-layer backbone and random, learnable episode batches."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class _TinyBackbone(nn.Module):
    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.out_features = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1)


def tiny_backbone(channels: int = 1, width: int = 8) -> nn.Module:
    """A one-layer conv backbone (``out_features = 4 * width``) for fast strategy checks."""
    return _TinyBackbone(channels, width)


def make_episodes(
    *,
    meta_batch: int = 2,
    ways: int = 3,
    shots: int | Sequence[int] = 2,
    queries: int = 2,
    channels: int = 1,
    image_size: int = 8,
    labelled: bool = True,
    seed: int = 0,
) -> Any:
    """A random :class:`metareg.EpisodeBatch` with class-major labels.

    ``shots`` may be a list with one support count per class (uneven support sets, as
    prediction builds them).
    """
    from metareg.episodes import EpisodeBatch

    per_class = [shots] * ways if isinstance(shots, int) else list(shots)
    if len(per_class) != ways:
        raise ValueError(f"shots has {len(per_class)} counts for {ways} ways")
    g = torch.Generator().manual_seed(seed)
    support_labels = torch.repeat_interleave(torch.arange(ways), torch.tensor(per_class))
    query_labels = torch.arange(ways).repeat_interleave(queries)
    # Class-dependent brightness so that the task is learnable, plus noise.
    def images(lab):
        base = (lab.float() + 1) / (ways + 1)
        noise = torch.rand(meta_batch, len(lab), channels, image_size, image_size, generator=g) * 0.3
        return (base.view(1, -1, 1, 1, 1) * 0.7 + noise).clamp(0, 1)

    return EpisodeBatch(
        support=images(support_labels),
        support_labels=support_labels.expand(meta_batch, -1).clone(),
        query=images(query_labels),
        query_labels=query_labels.expand(meta_batch, -1).clone() if labelled else None,
        ways=ways,
    )
