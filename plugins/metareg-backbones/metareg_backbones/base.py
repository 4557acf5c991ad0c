"""What every first-party backbone shares: feature size, pretrained weights, fine-tuning schedules.

Fine-tuning schedules (Flash's ``finetune`` strategies):

* ``no_freeze``: every parameter trains from the first step.
* ``freeze``: the backbone never trains: ``requires_grad`` is off for all its
  parameters and its BatchNorm layers stay in eval mode, so their running
  statistics stay those of the pretrained weights (a frozen layer that kept
  updating its statistics would drift away from the weights it was trained with).
* ``freeze_unfreeze``: as ``freeze`` until the training epoch ``unfreeze_epoch``
  (0-based), then as ``no_freeze``.

The core calls :meth:`Backbone.metareg_epoch_start` at the start of every training
epoch. The state depends only on the epoch number, so resuming mid-schedule from a
checkpoint lands in the right state. The optimiser must be given *all* backbone
parameters (frozen ones included) for ``freeze_unfreeze`` to train them once they
are unfrozen; optimisers skip parameters whose ``grad`` is ``None``.

No ``channels_last`` option: bench/bench_backbones.py showed no reliable gain from
it on CPU, and bf16 autocast was slower than fp32 on CPUs without bf16 units
(precision is the core's ``--precision`` anyway). Measure on a GPU before adding one.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

import metareg

Finetune = Literal["no_freeze", "freeze", "freeze_unfreeze"]
FINETUNE_CHOICES = ("no_freeze", "freeze", "freeze_unfreeze")


class Backbone(nn.Module):
    """Base class: maps ``(N, C, H, W)`` images to ``(N, out_features)``.

    Attributes the core may read:

    * ``out_features``: the feature size D.
    * ``pretrained_on``: what the loaded weights were trained on (``"imagenet"``,
      ...), or ``None`` when the backbone starts from random weights. The core warns
      when ``"imagenet"`` weights meet miniImageNet or tieredImageNet, whose test
      classes are ImageNet classes.
    * ``pretrained_from``: the file the weights came from, or ``None``.
    """

    out_features: int
    pretrained_on: str | None = None
    pretrained_from: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.finetune: str = "no_freeze"
        self.unfreeze_epoch: int = 0
        self.frozen: bool = False

    # -- fine-tuning schedule -------------------------------------------------
    def set_finetune(self, finetune: str, unfreeze_epoch: int) -> None:
        check_finetune(finetune, unfreeze_epoch)
        self.finetune = finetune
        self.unfreeze_epoch = unfreeze_epoch
        self._set_frozen(finetune in ("freeze", "freeze_unfreeze"))

    def metareg_epoch_start(self, epoch: int) -> None:
        """Apply the fine-tuning schedule for training epoch ``epoch`` (0-based)."""
        if self.finetune == "freeze_unfreeze":
            self._set_frozen(epoch < self.unfreeze_epoch)
        elif self.finetune == "freeze":
            self._set_frozen(True)

    def _set_frozen(self, frozen: bool) -> None:
        self.frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)  # put BatchNorm layers in the right mode

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def check_finetune(finetune: str, unfreeze_epoch: int) -> None:
    if finetune not in FINETUNE_CHOICES:
        raise metareg.OptionError(f"finetune: {finetune!r} is not one of {', '.join(FINETUNE_CHOICES)}")
    if unfreeze_epoch < 0:
        raise metareg.OptionError(f"unfreeze_epoch must be >= 0, got {unfreeze_epoch}")


def finish(
    model: Backbone,
    *,
    name: str,
    pretrained: str | None,
    pretrained_on: str | None,
    finetune: str,
    unfreeze_epoch: int,
) -> Backbone:
    """Load weights and set the fine-tuning schedule: the common tail of every factory."""
    from metareg_backbones.pretrained import load_pretrained

    check_finetune(finetune, unfreeze_epoch)
    if finetune != "no_freeze" and pretrained is None:
        # Not an error (a frozen random backbone is a valid, if odd, baseline) but rarely meant.
        import warnings

        warnings.warn(
            f"{name}: finetune={finetune!r} without pretrained weights freezes a randomly initialised backbone; "
            f"set pretrained=PATH_OR_NAME or finetune=no_freeze",
            stacklevel=3,
        )
    if pretrained is not None:
        load_pretrained(model, pretrained, name=name, pretrained_on=pretrained_on)
    elif pretrained_on is not None:
        raise metareg.OptionError(f"{name}: pretrained_on={pretrained_on!r} needs pretrained=PATH_OR_NAME")
    model.set_finetune(finetune, unfreeze_epoch)
    return model
