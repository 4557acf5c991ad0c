"""What the core asks of a backbone: the :class:`Backbone` protocol and its two optional members.

A backbone factory (:func:`metareg.hookspecs.metareg_backbones`) returns an ``nn.Module``. The
core relies on exactly these members, and on nothing else:

``forward(images) -> features``
    ``(N, C, H, W)`` floats to ``(N, out_features)`` floats, in training and evaluation mode.
``out_features: int``
    The feature size D; strategies size their heads with it.
``pretrained_on: str | None`` (optional, :class:`Pretrained`)
    What the weights the factory loaded were trained on (``"imagenet"``, ``"places365"``, ...),
    lower case; ``None`` or absent for random initialisation. The core warns when ``"imagenet"``
    weights meet a dataset whose :class:`metareg.DatasetInfo` says ``imagenet_derived``: those
    test classes were seen in pretraining.
``metareg_epoch_start(epoch: int) -> None`` (optional, :class:`EpochHook`)
    Called by the core at the start of every training epoch (0-based), before its first batch;
    a fine-tuning schedule freezes or unfreezes layers here. It must depend only on ``epoch``, so
    that a run resumed from a checkpoint lands in the same state.

A plain ``nn.Module`` that sets ``out_features`` is a backbone; ``metareg_backbones.base.Backbone``
is one implementation of all four members (with :class:`metareg.Pretraining`'s options).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from metareg.errors import MetaregError

if TYPE_CHECKING:
    from collections.abc import Mapping

    import torch

IMAGENET = "imagenet"


@runtime_checkable
class Backbone(Protocol):
    """A feature extractor: ``forward`` maps ``(N, C, H, W)`` images to ``(N, out_features)`` features."""

    out_features: int

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Pretrained(Protocol):
    """A backbone that says where its starting weights come from (``None``: random initialisation)."""

    pretrained_on: str | None


@runtime_checkable
class EpochHook(Protocol):
    """A backbone that changes with the training epoch (a freeze / unfreeze schedule)."""

    def metareg_epoch_start(self, epoch: int) -> None: ...


def check_backbone(backbone: Any, name: str) -> Backbone:
    """``backbone`` as built by the factory of ``name``, refused with one line when it is not a Backbone."""
    import torch

    if not isinstance(backbone, torch.nn.Module):
        raise MetaregError(f"backbone {name!r} returned {type(backbone).__name__}, not an nn.Module")
    if not isinstance(backbone, Backbone) or not isinstance(backbone.out_features, int):
        raise MetaregError(f"backbone {name!r} does not set an integer `out_features`")
    return backbone


def pretrained_on(backbone: Any) -> str | None:
    """What ``backbone``'s starting weights were trained on, lower case; ``None`` when it does not say."""
    origin = backbone.pretrained_on if isinstance(backbone, Pretrained) else None
    return origin.lower() if isinstance(origin, str) else None


def start_epoch(backbone: Any, epoch: int) -> None:
    """Tell ``backbone`` that training epoch ``epoch`` begins, when it has an :class:`EpochHook`."""
    if isinstance(backbone, EpochHook):
        backbone.metareg_epoch_start(epoch)


def pretraining_leak(backbone: Any, backbone_name: str, dataset_info: Mapping[str, Any] | None,
                     dataset_name: str | None) -> str | None:
    """The warning for ImageNet weights tested on ImageNet classes, or ``None`` when they do not meet."""
    from metareg.dataset_info import DatasetInfo

    if pretrained_on(backbone) != IMAGENET or not DatasetInfo.from_saved(dataset_info).imagenet_derived:
        return None
    return (
        f"backbone {backbone_name!r} carries ImageNet-pretrained weights, and the test classes of "
        f"{dataset_name or 'this dataset'!r} are ImageNet classes: test accuracy will be inflated. Train from "
        "scratch or pretrain on the training classes only for a fair figure."
    )
