"""ANIL (Raghu, Raghu, Bengio and Vinyals, 2020): almost no inner loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import metareg
from metareg_strategies.inner_loop import as_full, full_precision
from metareg_strategies.maml import GradientAdaptation, HeadInit
from metareg_strategies.masked import embed_real, episode_images


class ANIL(GradientAdaptation):
    """ANIL: MAML that adapts only a linear head on the backbone's features.

    The backbone runs once per episode (support and query in one pass, under the outer graph);
    the inner loop fine-tunes the head on the support features for the whole meta-batch at once
    (torch.func: grad inside vmap over episodes). Second order by default (cheap: only the head).
    Batch norm behaves as in any other strategy (batch statistics while training, running
    statistics at evaluation).

    adaptation_steps: inner gradient steps per episode while meta-training.
    adaptation_lr: inner learning rate for the head.
    first_order: drop second-order terms.
    test_adaptation_steps: inner steps at validation/test time; default: same as adaptation_steps.
    learn_lr: Meta-SGD: learn one inner learning rate per head weight, initialised to adaptation_lr.
    head_init: 'learned' (the head's initial weights are meta-learnt; episodes must have --ways
        classes) or 'zero' (the head starts at zero in every episode, so any number of ways works).
    """

    name = "anil"

    def __init__(
        self,
        adaptation_steps: int = 5,
        adaptation_lr: float = 0.1,
        first_order: bool = False,
        test_adaptation_steps: int | None = None,
        learn_lr: bool = False,
        head_init: HeadInit = "learned",
    ):
        super().__init__(
            adaptation_steps=adaptation_steps,
            adaptation_lr=adaptation_lr,
            first_order=first_order,
            test_adaptation_steps=test_adaptation_steps,
            learn_lr=learn_lr,
            head_init=head_init,
        )

    def adaptable_named_parameters(self, include_frozen: bool = False):
        if self.head_init == "learned":
            yield "head.weight", self.head.weight
            yield "head.bias", self.head.bias

    def _model(self, params: dict[str, torch.Tensor], features: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:  # a linear head: no batch statistics
        return F.linear(features, params["head.weight"], params["head.bias"])

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        self._check_ways(episodes.ways)
        n_support = episodes.support.shape[1]
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            features = embed_real(self, *episode_images(episodes))  # padded slots: zero features
        with full_precision(features.device):
            features = as_full(features)
            support, query = features[:, :n_support], features[:, n_support:]
            return self.adapt(self._model, support, episodes.support_labels, query, episodes.ways, episodes)
