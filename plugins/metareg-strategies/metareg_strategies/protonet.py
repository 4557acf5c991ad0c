"""Prototypical networks (Snell, Swersky and Zemel, 2017)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

import metareg


class PrototypicalNetworks(metareg.Strategy):
    """Classify queries by distance to the mean support embedding of each class.

    distance: 'euclidean' (squared Euclidean, as in the paper) or 'cosine'.
    temperature: logits are divided by this; for cosine a value around 0.1 trains better.
    """

    def __init__(self, distance: Literal["euclidean", "cosine"] = "euclidean", temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise metareg.OptionError(f"prototypicalnetworks: temperature must be positive, got {temperature}")
        self.distance, self.temperature = distance, temperature

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        # Support and query through the backbone in one pass: one batch-norm batch, one kernel launch per layer.
        both = torch.cat([episodes.support, episodes.query], 1)
        features = self.embed(both).float()
        n_support = episodes.support.shape[1]
        support, query = features[:, :n_support], features[:, n_support:]
        prototypes = metareg.class_means(support, episodes.support_labels, episodes.ways)
        if self.distance == "cosine":
            logits = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        else:
            logits = -torch.cdist(query, prototypes).pow(2)
        return logits / self.temperature
