"""What every first-party backbone shares: feature size, pretrained weights, fine-tuning schedules.

The options (``pretrained``, ``pretrained_on``, ``finetune``, ``unfreeze_epoch``) and the
meaning of each schedule are the core's :class:`metareg.Pretraining` group; factories take
them through ``@metareg.pretraining_options``. This module carries them out:

* ``freeze`` turns ``requires_grad`` off for every parameter and keeps the BatchNorm layers
  in eval mode, so their running statistics stay those of the pretrained weights (a frozen
  layer that kept updating its statistics would drift away from the weights it was trained with).
* The core calls :meth:`Backbone.metareg_epoch_start` (the :class:`metareg.EpochHook` of the
  Backbone protocol) at the start of every training epoch. The state depends only on the epoch
  number, so resuming mid-schedule from a checkpoint lands in the right state. The optimiser
  must be given *all* backbone parameters (frozen ones included) for ``freeze_unfreeze`` to
  train them once they are unfrozen; optimisers skip parameters whose ``grad`` is ``None``.

No ``channels_last`` option: bench/bench_backbones.py showed no reliable gain from
it on CPU, and bf16 autocast was slower than fp32 on CPUs without bf16 units
(precision is the core's ``--precision`` anyway). Measure on a GPU before adding one.
"""
from __future__ import annotations

from torch import nn

import metareg


class Backbone(nn.Module):
    """Base class: maps ``(N, C, H, W)`` images to ``(N, out_features)``; a :class:`metareg.Backbone`.

    * ``out_features``: the feature size D.
    * ``pretrained_on``: what the loaded weights were trained on (``"imagenet"``, ...), or ``None``
      when the backbone starts from random weights (:class:`metareg.Pretrained`).
    * ``pretrained_from``: the file the weights came from, or ``None``.
    """

    out_features: int
    pretrained_on: str | None = None
    pretrained_from: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.pretraining = metareg.Pretraining()
        self.frozen: bool = False

    # -- fine-tuning schedule -------------------------------------------------
    def set_pretraining(self, pretraining: metareg.Pretraining) -> None:
        self.pretraining = pretraining
        self._set_frozen(pretraining.frozen_at(None))

    def metareg_epoch_start(self, epoch: int) -> None:
        """Apply the fine-tuning schedule for training epoch ``epoch`` (0-based)."""
        if self.pretraining.finetune != "no_freeze":
            self._set_frozen(self.pretraining.frozen_at(epoch))

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


def finish(model: Backbone, *, name: str, pretraining: metareg.Pretraining) -> Backbone:
    """Load weights and set the fine-tuning schedule: the common tail of every factory."""
    from metareg_backbones.pretrained import load_pretrained

    pretraining.check(name)
    if pretraining.finetune != "no_freeze" and pretraining.pretrained is None:
        # Not an error (a frozen random backbone is a valid, if odd, baseline) but rarely meant.
        import warnings

        warnings.warn(
            f"{name}: finetune={pretraining.finetune!r} without pretrained weights freezes a randomly initialised "
            f"backbone; set pretrained=PATH_OR_NAME or finetune=no_freeze",
            stacklevel=4,  # the caller of the factory, through @metareg.pretraining_options
        )
    if pretraining.pretrained is not None:
        load_pretrained(model, pretraining.pretrained, name=name, pretrained_on=pretraining.pretrained_on)
    model.set_pretraining(pretraining)
    return model
