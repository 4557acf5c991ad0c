"""learn2learn's gradient-based meta-learners as metareg strategies.

Both adapt a linear head on the backbone's features in an inner loop (the backbone is
shared, as in ANIL), with what metareg's own strategies lack:

* ``l2l-metasgd``: ``learn2learn.algorithms.MetaSGD``, a learned step size per head parameter;
* ``l2l-metacurvature``: ``learn2learn.algorithms.GBML`` with ``learn2learn.optim.MetaCurvatureTransform``,
  a learned preconditioner of the head's gradients (Park & Oliva 2019).

The outer loss back-propagates through the adaptation into the backbone, the head's
initialisation and the learned step sizes / curvature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import metareg

from ._l2l import learn2learn


class _AdaptedHead(metareg.Strategy):
    needs_grad_at_eval = True  # the inner loop differentiates the support loss at test time too

    def __init__(self, adaptation_steps: int, adaptation_lr: float, first_order: bool, name: str):
        super().__init__()
        if adaptation_steps < 1:
            raise metareg.OptionError(f"{name}: adaptation_steps must be at least 1, got {adaptation_steps}")
        if adaptation_lr <= 0:
            raise metareg.OptionError(f"{name}: adaptation_lr must be positive, got {adaptation_lr}")
        self.adaptation_steps, self.adaptation_lr, self.first_order = adaptation_steps, adaptation_lr, first_order

    def _wrap(self, head: nn.Module) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, backbone: nn.Module, task: metareg.TaskInfo) -> None:
        super().setup(backbone, task)
        self.max_ways = max(task.ways, task.test_ways)
        self.learner = self._wrap(nn.Linear(task.feature_dim, self.max_ways))

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        if episodes.ways > self.max_ways:
            raise metareg.ConfigError(
                f"{type(self).__name__}: episodes have {episodes.ways} ways but the head was built for "
                f"{self.max_ways}; set --ways/--test-ways to at least {episodes.ways}"
            )
        n_support = episodes.support.shape[1]
        features = self.embed(torch.cat([episodes.support, episodes.query], 1))
        support, query = features[:, :n_support], features[:, n_support:]
        first_order = self.first_order or not self.training  # no second-order graph at evaluation
        logits = []
        for b in range(features.shape[0]):
            learner = self.learner.clone()
            for _ in range(self.adaptation_steps):
                inner = F.cross_entropy(learner(support[b])[:, : episodes.ways], episodes.support_labels[b])
                learner.adapt(inner, first_order=first_order)
            logits.append(learner(query[b])[:, : episodes.ways])
        return torch.stack(logits)


class MetaSGD(_AdaptedHead):
    """Meta-SGD (Li et al. 2017) on a linear head, with learn2learn's MetaSGD.

    adaptation_steps: inner-loop gradient steps on the support set.
    adaptation_lr: initial value of every learned per-parameter step size.
    first_order: drop second-order terms during training (faster, less memory).
    """

    def __init__(self, adaptation_steps: int = 1, adaptation_lr: float = 0.5, first_order: bool = False):
        super().__init__(adaptation_steps, adaptation_lr, first_order, "l2l-metasgd")

    def _wrap(self, head: nn.Module) -> nn.Module:
        return learn2learn().algorithms.MetaSGD(head, lr=self.adaptation_lr, first_order=self.first_order)


class MetaCurvature(_AdaptedHead):
    """Meta-Curvature (Park & Oliva 2019) on a linear head, with learn2learn's GBML and MetaCurvatureTransform.

    adaptation_steps: inner-loop gradient steps on the support set.
    adaptation_lr: inner-loop learning rate (the learned curvature rescales it per parameter).
    first_order: drop second-order terms during training (faster, less memory).
    """

    def __init__(self, adaptation_steps: int = 1, adaptation_lr: float = 0.5, first_order: bool = False):
        super().__init__(adaptation_steps, adaptation_lr, first_order, "l2l-metacurvature")

    def _wrap(self, head: nn.Module) -> nn.Module:
        l2l = learn2learn()
        return l2l.algorithms.GBML(
            head,
            transform=l2l.optim.MetaCurvatureTransform,
            lr=self.adaptation_lr,
            adapt_transform=False,
            first_order=self.first_order,
        )
