"""New classes without retraining: :meth:`FewShotClassifier.add_class` / ``remove_class``, ``metareg enroll``.

Strategies whose support state is one row per class computed from that class's images alone
declare it (``per_class_state = ("prototypes",)`` on prototypical networks): a new class costs
one backbone pass over its own images and a row appended; removing one drops its row. Every
other strategy (MetaOptNet's jointly fitted head, MAML's adaptation on the whole support set)
is refitted on the stored support images plus the new ones, and the caller is told so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metareg.errors import DataError
from metareg.predict_inputs import expand_queries

INCREMENTAL, REFIT = "incremental", "refit"


def _fitted(clf) -> None:
    if clf.state is None or clf.classes is None:
        raise DataError("the classifier has no support set yet; call fit(support) or load a .fewshot file first")


def check_new_name(clf, name: Any) -> str:
    _fitted(clf)
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "/" in name:
        raise DataError(f"class name {name!r} is not usable: give a non-empty name without surrounding spaces or '/'")
    if name in clf.classes:
        raise DataError(f"class {name!r} already exists ({len(clf.classes)} classes); remove it first "
                        "(metareg enroll MODEL --remove NAME) or choose another name")
    if name == "unknown" and clf.open_set:
        raise DataError("class name 'unknown' is how this model answers queries far from every class; "
                        "choose another name")
    return name


def new_images(clf, images: Any, name: str) -> torch.Tensor:
    """Every image of the new class decoded (uint8) before any model work; no images is refused."""
    items: Sequence[Any] = expand_queries(images)
    if not items:
        raise DataError(f"class {name!r}: no images given; pass image files or a folder of images")
    return clf.load_images(list(items))


def add_class(clf, name: str, images: Any) -> str:
    """Enrol class ``name``; returns :data:`INCREMENTAL` or :data:`REFIT` (what it took)."""
    name = check_new_name(clf, name)
    batch = new_images(clf, images, name)
    ways = len(clf.classes)
    if clf.incremental:
        with clf._grad():
            part = clf.strategy.fit_support(clf.prepare(batch), torch.zeros(len(batch), dtype=torch.long,
                                                                                device=clf.device), 1)
        clf.state = {k: torch.cat([clf.state[k], part[k].detach().to(clf.state[k].dtype)]) for k in clf.state}
        how = INCREMENTAL
    else:
        _need_images(clf)
        labels = torch.cat([clf.support_labels, torch.full((len(batch),), ways, dtype=torch.long)])
        _refit(clf, torch.cat([clf.support_images, batch]), labels, ways + 1)
        how = REFIT
    clf.classes = [*clf.classes, name]
    clf.counts = [*(clf.counts or [0] * ways), len(batch)]
    return how


def remove_class(clf, name: str) -> str:
    """Forget class ``name``; returns :data:`INCREMENTAL` or :data:`REFIT`."""
    _fitted(clf)
    if name not in clf.classes:
        raise DataError(f"class {name!r} is not in the model; its classes are {', '.join(map(repr, clf.classes))}")
    if len(clf.classes) <= 2:
        raise DataError(f"cannot remove {name!r}: the model would keep {len(clf.classes) - 1} class, and few-shot "
                        "prediction needs at least 2; enrol another class first")
    index = clf.classes.index(name)
    keep = [i for i in range(len(clf.classes)) if i != index]
    if clf.incremental:
        rows = torch.tensor(keep, device=clf.device)
        clf.state = {k: v.index_select(0, rows) for k, v in clf.state.items()}
        how = INCREMENTAL
    else:
        _need_images(clf)
        mask = clf.support_labels != index
        labels = clf.support_labels[mask]
        _refit(clf, clf.support_images[mask], labels - (labels > index).long(), len(keep))
        how = REFIT
    clf.classes = [clf.classes[i] for i in keep]
    if clf.counts:
        clf.counts = [clf.counts[i] for i in keep]
    return how


def _need_images(clf) -> None:
    if clf.support_images is None or clf.support_labels is None:
        raise DataError(f"strategy {clf.strategy_name} refits on the whole support set to change classes, but this "
                        "classifier does not hold its support images (fitted from a cache?); fit(support) again")


def _refit(clf, images: torch.Tensor, labels: torch.Tensor, ways: int) -> None:
    with clf._grad():
        state = clf.strategy.fit_support(clf.prepare(images), labels.to(clf.device), ways)
    clf.state = {k: v.detach() for k, v in state.items()}
    clf.support_images, clf.support_labels = images, labels
