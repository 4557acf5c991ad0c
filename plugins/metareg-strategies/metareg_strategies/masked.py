"""Backbone passes over padded batches of variable episodes (``metareg.EpisodeBatch.padded``).

Only the real images go through the backbone, flattened across episodes: padding costs no
compute and never enters batch-norm statistics, so each episode's features are those it would
have alone (at evaluation, and in training for one episode per pass). Padded slots get zero
features, which the strategies' masked statistics then ignore.
"""
from __future__ import annotations

import torch

import metareg


def episode_images(episodes: metareg.EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Support and query images in one ``(B, S + Q, ...)`` tensor, and which of them are real (None: all)."""
    both = torch.cat([episodes.support, episodes.query], 1)
    mask = torch.cat([episodes.support_mask, episodes.query_mask], 1) if episodes.padded else None
    return both, mask


def embed_real(strategy: metareg.Strategy, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, N, D)`` features of ``(B, N, C, H, W)`` images; with ``mask``, only real images are embedded
    (in one backbone pass) and padded slots are zero."""
    if mask is None:
        return strategy.embed(images)
    features = strategy.backbone(images[mask])
    out = features.new_zeros(*mask.shape, features.shape[-1])
    out[mask] = features
    return out
