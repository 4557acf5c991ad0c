"""Open-set answers: "none of these" for a query far from every class.

The score of a query is its largest logit (for prototypical networks the negative squared
distance to the nearest prototype), which does not grow or shrink with the number of classes
the way the largest softmax probability does, so a threshold calibrated on small episodes
holds for a deployment with many classes. A query whose score is at or below the threshold
is ``unknown``.

Calibration draws episodes from the training dataset's VALIDATION classes only (training
classes were fitted, test classes are kept for reporting): each episode has ``ways`` known
classes with ``shots`` support images, queries of those classes, and queries of other
validation classes that are not in the episode (the unknowns). The threshold is the score that
accepts at most ``max_false_accept`` of the unknowns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from metareg.errors import ConfigError, OptionError

SCORE = "max_logit"
_OFF = "export without it: --no-open-set"


def score(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().max(-1).values


def rejected(open_set: dict[str, Any] | None, logits: torch.Tensor) -> torch.Tensor:
    """Rows of ``logits`` the calibration calls unknown; all False when there is no calibration."""
    if not open_set:
        return torch.zeros(len(logits), dtype=torch.bool)
    return score(logits) <= float(open_set["threshold"])


@dataclass
class EpisodeScores:
    """Scores of known queries (with whether the closed-set answer was right) and of unknown queries."""

    known: torch.Tensor
    correct: torch.Tensor
    unknown: torch.Tensor


def episode_scores(clf, split, *, ways: int, shots: int, queries: int, episodes: int, seed: int,
                   per_forward: int = 8, score_fn=score) -> EpisodeScores:
    """Open-set episodes drawn from one split (a :class:`metareg.ClassSplit` in the dataset's pixel convention).

    Each episode: ``ways`` known classes (``shots`` support and ``queries`` query images each) and
    ``queries`` images of each of ``ways`` other classes of the split (the unknowns). Episodes go
    through the strategy's ``forward`` in batches, as evaluation runs them.
    """
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(split.labels == c).flatten() for c in range(split.num_classes)]
    usable = [c for c, idx in enumerate(by_class) if len(idx) > shots]
    if len(usable) < ways + 1:
        raise ConfigError(f"the split has {len(usable)} classes with more than {shots} images; open-set episodes "
                          f"need {ways} known classes and at least one unknown class; {_OFF}")
    queries = max(1, min(queries, min(len(by_class[c]) for c in usable) - shots))
    outside = min(ways, len(usable) - ways)
    index, qlabels = [], torch.arange(ways).repeat_interleave(queries)
    for _ in range(episodes):
        order = torch.tensor(usable)[torch.randperm(len(usable), generator=gen)].tolist()
        picks = [by_class[c][torch.randperm(len(by_class[c]), generator=gen)] for c in order[:ways + outside]]
        index.append(torch.cat([p[:shots] for p in picks[:ways]] + [p[shots:shots + queries] for p in picks[:ways]]
                               + [p[:queries] for p in picks[ways:]]))
    index = torch.stack(index)  # (episodes, support + known queries + unknown queries)
    logits = torch.cat([_logits(clf, split, part, ways, shots) for part in index.split(per_forward)])
    n = ways * queries
    return EpisodeScores(score_fn(logits[:, :n]).flatten(), (logits[:, :n].argmax(-1) == qlabels).flatten(),
                         score_fn(logits[:, n:]).flatten())


def _logits(clf, split, index: torch.Tensor, ways: int, shots: int) -> torch.Tensor:
    from metareg.episodes import EpisodeBatch

    # Stored images are already in the model's pixel convention: no inversion.
    images = clf.transform.evaluate(split.images.gather(index.flatten()).to(clf.device).float().div_(255))
    images = images.view(*index.shape, *images.shape[1:])
    labels = torch.arange(ways, device=clf.device).repeat_interleave(shots).expand(len(index), -1)
    with clf._grad():
        episodes = EpisodeBatch(images[:, :ways * shots], labels, images[:, ways * shots:], None, ways)
        return clf.strategy(episodes).detach().float().cpu()


def threshold_for(unknown: torch.Tensor, max_false_accept: float) -> float:
    """The score at or below which a query is rejected, accepting at most that share of ``unknown``."""
    ranked = unknown.sort(descending=True).values
    k = min(int(math.floor(max_false_accept * len(ranked))), len(ranked) - 1)
    return float(ranked[k])


def summary(scores: EpisodeScores, threshold: float) -> dict[str, float]:
    """Accept and reject rates at ``threshold``, the closed-set accuracy and what rejection costs it."""
    accepted = scores.known > threshold
    return {
        "false_accept": float((scores.unknown > threshold).double().mean()),
        "false_reject": float((~accepted).double().mean()),
        "closed_set_accuracy": float(scores.correct.double().mean()),
        "accuracy_with_rejection": float((scores.correct & accepted).double().mean()),
        "auroc": auroc(scores.known, scores.unknown),
    }


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """P(score of a known query > score of an unknown one), ties counted half (Mann-Whitney)."""
    both = torch.cat([known, unknown]).double()
    ranks = torch.empty_like(both)
    order = both.argsort()
    ranks[order] = torch.arange(1, len(both) + 1, dtype=torch.double)
    for value in both.unique():  # average ranks of ties
        tied = both == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    n1, n0 = len(known), len(unknown)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def validation_split(clf, registry=None):
    """The validation classes of the dataset the model was trained on, rebuilt through the registry."""
    return training_dataset(clf, registry).validation


def training_dataset(clf, registry=None):
    """The dataset the model was trained on, rebuilt through the registry from the checkpoint's config."""
    from metareg.errors import MetaregError
    from metareg.preparation import build_data

    config = clf.model.config
    try:
        dataset = build_data(config, registry)  # a model trained on several sources: all of them
    except MetaregError as exc:
        raise ConfigError(f"open-set calibration needs the validation classes of the training dataset "
                          f"{config.dataset!r}, which cannot be rebuilt here ({exc}); {_OFF}") from None
    if (dataset.channels, dataset.image_size) != (clf.channels, clf.image_size):
        raise ConfigError(f"dataset {config.dataset!r} now gives {dataset.channels}x{dataset.image_size}px images, "
                          f"the model takes {clf.channels}x{clf.image_size}px; {_OFF}")
    return dataset


def calibrate(clf, *, max_false_accept: float = 0.05, split=None, ways: int | None = None, shots: int | None = None,
              queries: int = 5, episodes: int = 40, seed: int = 0) -> dict[str, Any]:
    """The open-set record stored in a ``.fewshot`` file (``clf.open_set``); ``split`` defaults to
    the training dataset's validation classes. ``ways``/``shots`` default to the fitted support set's."""
    if not 0 < max_false_accept < 1:
        raise OptionError(f"--max-false-accept must lie strictly between 0 and 1, got {max_false_accept}")
    split = split if split is not None else validation_split(clf)
    counts = torch.bincount(split.labels, minlength=split.num_classes)
    if shots is None:
        fitted = _fitted_shots(clf)
        shots = max(1, min(fitted, int(counts.max()) - 1))
    if ways is None:
        ways = len(clf.classes or ()) or 5
        ways = max(2, min(ways, int((counts > shots).sum()) - 1))
    scores = episode_scores(clf, split, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed)
    threshold = threshold_for(scores.unknown, max_false_accept)
    return {"score": SCORE, "threshold": threshold, "max_false_accept": max_false_accept,
            **summary(scores, threshold),
            "calibrated_on": {"split": "validation", "dataset": clf.model.config.dataset,
                              "classes": int(split.num_classes), "episodes": episodes, "ways": ways, "shots": shots,
                              "queries": queries, "seed": seed}}


def _fitted_shots(clf) -> int:
    counts = clf.counts or [5]
    return max(1, int(torch.tensor(counts).median()))
