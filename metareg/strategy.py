"""The Strategy contract: meta-learning math, without Lightning.

A strategy is an ``nn.Module``. The core builds the backbone, hands it over once
with :meth:`Strategy.setup`, and then calls :meth:`Strategy.loss` on training
batches and :meth:`Strategy.forward` on evaluation episodes. Devices, precision,
optimisers, distribution and checkpoints are the core's business.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metareg.episodes import EpisodeBatch
from metareg.errors import ConfigError, PluginError


class TrainBatches(StrEnum):
    """What a strategy trains on, read once per run from its ``train_batches``.

    ``EPISODES``: N-way episodes (:meth:`Strategy.loss`). ``LABELLED``: plain batches of
    images with their training-class labels (:meth:`Strategy.labelled_loss`, a supervised
    baseline). The datamodule draws, and the learner steps, according to this one value.
    A ``StrEnum``, so a strategy may still say ``train_batches = "labelled"``.
    """

    EPISODES = "episodes"
    LABELLED = "labelled"

    @classmethod
    def of(cls, strategy) -> TrainBatches:
        """The mode of a strategy class or instance; an unknown value is refused, naming it."""
        value = getattr(strategy, "train_batches", cls.EPISODES)
        try:
            return cls(value)
        except ValueError:
            name = getattr(strategy, "__name__", type(strategy).__name__)
            raise PluginError(
                f"strategy {name}: train_batches must be one of {', '.join(repr(m.value) for m in cls)}, "
                f"got {value!r}; fix the strategy class"
            ) from None


@dataclass(frozen=True)
class TaskInfo:
    """What a strategy may know about the problem when it is set up."""

    ways: int
    shots: int
    queries: int
    test_ways: int
    test_shots: int
    test_queries: int
    num_train_classes: int
    channels: int
    image_size: int
    feature_dim: int
    #: ``"variable"`` under ``--episodes variable``: episodes of 5 to 50 ways arrive as padded batches.
    episodes: str = "fixed"


class StepOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor  # (..., classes)
    labels: torch.Tensor  # matching logits.shape[:-1]


class Strategy(nn.Module):
    """Base class for strategies.

    Subclasses implement ``forward(episodes) -> logits`` of shape
    ``(B, queries_per_episode, episodes.ways)``, and may override ``setup`` to
    build heads once the backbone and task are known. ``self.training`` tells
    training from evaluation. Strategies that train on plain labelled batches
    (a supervised baseline) set ``train_batches = "labelled"`` (or
    ``TrainBatches.LABELLED``) and implement ``labelled_loss``; they are still
    evaluated on episodes.
    """

    train_batches: ClassVar[TrainBatches | str] = TrainBatches.EPISODES
    #: True when evaluation needs gradients (inner-loop adaptation); the core
    #: then evaluates with autograd enabled.
    needs_grad_at_eval: ClassVar[bool] = False
    #: True when a query's logits depend on the other queries evaluated with it (batch
    #: statistics over the query set, as MAML's batch norm); `metareg predict` says so.
    transductive: ClassVar[bool] = False
    #: Whether convolutions should run in channels-last (NHWC) layout when the run does not
    #: say (``channels_last`` unset): faster for ordinary training on CPUs and GPUs, slower for
    #: MAML's vmapped inner loop, which turns the episodes into grouped convolutions.
    channels_last: ClassVar[bool] = True
    #: Keys of the :meth:`fit_support` state that hold one row per class, each computed from that
    #: class's support images alone (``("prototypes",)`` for prototypical networks). Declaring them
    #: lets ``metareg enroll`` / ``FewShotClassifier.add_class`` append or drop one class's rows
    #: instead of refitting on every stored support image (:mod:`metareg.enroll`). Leave it empty
    #: when classes are fitted jointly (MetaOptNet's head) or adapted on at prediction time (MAML).
    per_class_state: ClassVar[tuple[str, ...]] = ()
    #: Label smoothing of the training cross-entropy: the run's ``label_smoothing`` setting, set by the
    #: core before training (:func:`run_label_smoothing`). :meth:`loss` applies it; a strategy that
    #: overrides ``loss`` or ``labelled_loss`` should pass it to its own cross-entropy.
    label_smoothing: float = 0.0

    def setup(self, backbone: nn.Module, task: TaskInfo) -> None:
        """Receive the backbone (as a submodule) and the task description."""
        self.backbone = backbone
        self.task = task

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Run the backbone over ``(B, N, C, H, W)`` images -> ``(B, N, D)`` features."""
        b, n = images.shape[:2]
        return self.backbone(images.flatten(0, 1)).view(b, n, -1)

    def forward(self, episodes: EpisodeBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(episodes) -> query logits")

    def loss(self, episodes: EpisodeBatch) -> StepOutput:
        """Cross-entropy of the query logits (with the run's label smoothing); override for other objectives."""
        logits = self(episodes)
        labels = episodes.query_labels
        # F.cross_entropy on an unpadded batch; a padded one (variable episodes) leaves padding out.
        loss = episodes.query_loss(logits, self.label_smoothing)
        return StepOutput(loss, logits, labels)

    # ------------------------------------------------------------------ extra metrics
    def log_metric(self, name: str, value: torch.Tensor | float) -> None:
        """Report a scalar about the current batch, e.g. from ``forward`` or ``loss``.

        The core logs it as ``train/<name>`` after each training step and as ``val/<name>`` (the
        mean over the validation episodes) after each validation epoch, in ``metrics.csv`` and the
        run's other loggers; it is dropped while testing or predicting. The latest value of a name
        wins within a step. Call it outside vmapped code (an inner loop), on a scalar tensor.
        """
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        self._step_metrics = {**getattr(self, "_step_metrics", {}), name: value}

    def pop_metrics(self) -> dict[str, torch.Tensor]:
        """The metrics logged since the last call (the core calls it after every step), then forgets them."""
        metrics, self._step_metrics = getattr(self, "_step_metrics", {}), {}
        return metrics

    def labelled_loss(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} trains on episodes, not labelled batches")

    # ------------------------------------------------------------------ prediction
    # Optional protocol used by `metareg predict` / metareg.FewShotClassifier: the
    # support set is fixed while queries keep arriving, so a strategy may compute
    # once what it needs from the support set (prototypes, a fitted base learner)
    # and reuse it for every query batch. The state is a dict of tensors so it can
    # be cached on disk (safetensors) without pickle. The defaults keep the
    # prepared support images and call ``forward`` on a one-episode batch, which
    # is correct for every strategy (MAML re-adapts per query batch).

    def fit_support(self, support: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        """State for :meth:`predict_query` from ``(S, C, H, W)`` support images and ``(S,)`` labels in
        ``[0, ways)`` (class counts may differ). Override to precompute, e.g. class prototypes."""
        return {"support": support, "support_labels": labels}

    def predict_query(self, state: dict[str, torch.Tensor], query: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``(Q, ways)`` for ``(Q, C, H, W)`` query images, given :meth:`fit_support`'s state."""
        episodes = EpisodeBatch(state["support"].unsqueeze(0), state["support_labels"].unsqueeze(0),
                                query.unsqueeze(0), None, ways)
        return self(episodes)[0]

    def export_head(self) -> nn.Module | None:
        """A TorchScript-compatible module ``(support_features (S, D), support_labels (S,), query_features
        (Q, D)) -> logits (Q, ways)`` that predicts from backbone features alone, for `metareg export`;
        ``None`` (the default) when prediction needs more than features (inner-loop adaptation)."""
        return None


def run_label_smoothing(strategy: Strategy, setting: float) -> float:
    """The label smoothing a run trains ``strategy`` with: the run's ``label_smoothing`` setting or, when
    that is 0, a value the strategy set itself (the supervised strategy's older ``label_smoothing``
    option); two different non-zero values are refused."""
    # The strategy's own value, as first seen: a strategy handed to a second learner keeps its option.
    own = strategy.__dict__.setdefault("_own_label_smoothing", float(getattr(strategy, "label_smoothing", 0) or 0))
    if setting and own and own != setting:
        raise ConfigError(f"label smoothing is given twice: label_smoothing {setting} and the strategy's own "
                          f"option {own}; keep only the setting (--label-smoothing)")
    return float(setting or own)


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Per-class mean of ``(B, N, D)`` features with ``(B, N)`` labels -> ``(B, ways, D)``.

    Works for uneven class counts (prediction support sets)."""
    onehot = F.one_hot(labels, ways).to(features.dtype)  # (B, N, ways)
    sums = onehot.transpose(1, 2) @ features
    return sums / onehot.sum(1).clamp(min=1).unsqueeze(-1)
