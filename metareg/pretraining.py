"""The option group backbones share for starting from trained weights: :class:`Pretraining`.

Four options, declared once here and offered by every backbone factory that decorates
itself with :func:`pretraining_options`::

    @metareg.pretraining_options
    def mynet(*, channels: int = 3, image_size: int = 84, width: int = 64,
              pretraining: metareg.Pretraining) -> nn.Module:
        '''My network.

        width: filters in the first layer.
        '''
        net = MyNet(channels, width)
        ...  # load pretraining.pretrained, set net.pretrained_on, follow pretraining.frozen_at(epoch)
        return net

The decorated factory's options (``metareg info``, ``--backbone-opt``, config files) are its
own followed by ``pretrained``, ``pretrained_on``, ``finetune`` and ``unfreeze_epoch``, with the
types, defaults and help below; the factory receives them as one ``pretraining`` record. What
the backbone does with them is its own business; the core reads back only what the
:class:`metareg.Backbone` protocol says: ``pretrained_on`` and the ``metareg_epoch_start`` hook.
"""
from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from metareg.errors import OptionError

FINETUNE_CHOICES = ("no_freeze", "freeze", "freeze_unfreeze")
Finetune = Literal["no_freeze", "freeze", "freeze_unfreeze"]

_HELP = """\
pretrained: weights to start from: a file path, or a file name in the metareg weights cache
    ($METAREG_CACHE_DIR/weights or the user cache dir); never downloaded.
pretrained_on: what the weights were trained on (e.g. imagenet); default: read from the file or guessed
    from its name (torchvision's file names mean imagenet).
finetune: no_freeze trains everything; freeze keeps the backbone frozen (BatchNorm statistics too);
    freeze_unfreeze keeps it frozen until epoch `unfreeze_epoch`.
unfreeze_epoch: the training epoch (0-based) at which freeze_unfreeze unfreezes the backbone."""


@dataclass(frozen=True)
class Pretraining:
    """Where a backbone's weights start and when they train (Flash's ``finetune`` strategies).

    finetune schedules:

    * ``no_freeze``: every parameter trains from the first step.
    * ``freeze``: the backbone never trains; its BatchNorm statistics stay those of the weights.
    * ``freeze_unfreeze``: as ``freeze`` until training epoch ``unfreeze_epoch`` (0-based), then
      as ``no_freeze``. A schedule depends only on the epoch, so a resumed run lands in step.
    """

    pretrained: str | None = None
    pretrained_on: str | None = None
    finetune: Finetune = "no_freeze"
    unfreeze_epoch: int = 10

    FINETUNE_CHOICES: ClassVar[tuple[str, ...]] = FINETUNE_CHOICES
    HELP: ClassVar[str] = _HELP

    def check(self, component: str) -> None:
        """Refuse a schedule that does not exist and a provenance without weights, naming ``component``."""
        if self.finetune not in FINETUNE_CHOICES:
            raise OptionError(f"finetune: {self.finetune!r} is not one of {', '.join(FINETUNE_CHOICES)}")
        if self.unfreeze_epoch < 0:
            raise OptionError(f"unfreeze_epoch must be >= 0, got {self.unfreeze_epoch}")
        if self.pretrained_on is not None and self.pretrained is None:
            raise OptionError(f"{component}: pretrained_on={self.pretrained_on!r} needs pretrained=PATH_OR_NAME")

    def frozen_at(self, epoch: int | None) -> bool:
        """Whether the backbone is frozen during training epoch ``epoch`` (``None``: before training starts)."""
        if self.finetune == "freeze":
            return True
        if self.finetune == "freeze_unfreeze":
            return epoch is None or epoch < self.unfreeze_epoch
        return False


def pretraining_options(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Give a backbone factory the :class:`Pretraining` options; it receives them as ``pretraining=``."""
    own = inspect.signature(factory)
    if "pretraining" not in own.parameters:
        raise TypeError(f"{factory.__qualname__}: a factory decorated with pretraining_options takes a keyword "
                        "argument `pretraining` (a metareg.Pretraining)")
    names = [f.name for f in fields(Pretraining)]
    clash = sorted(set(names) & set(own.parameters))
    if clash:
        raise TypeError(f"{factory.__qualname__}: option {clash[0]!r} belongs to metareg.Pretraining; "
                        "drop it from the signature")

    @functools.wraps(factory)
    def with_pretraining(**kwargs: Any) -> Any:
        group = {name: kwargs.pop(name) for name in names if name in kwargs}
        return factory(**kwargs, pretraining=Pretraining(**group))

    hints = typing.get_type_hints(Pretraining)
    group_params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(Pretraining)
    ]
    params = [p for name, p in own.parameters.items() if name != "pretraining"]
    with_pretraining.__signature__ = own.replace(parameters=params + group_params)
    # Real types for the group (the factory's own annotations stay as written: options.py resolves them
    # in the factory's module, which typing.get_type_hints finds through __wrapped__).
    annotations = {k: v for k, v in getattr(factory, "__annotations__", {}).items() if k != "pretraining"}
    with_pretraining.__annotations__ = {**annotations, **{p.name: p.annotation for p in group_params}}
    with_pretraining.__doc__ = inspect.cleandoc(factory.__doc__ or "") + "\n" + _HELP
    # Read by model_loading: a trained model's weights are in its file, so it is rebuilt without the group.
    with_pretraining.__metareg_pretraining__ = True
    return with_pretraining


def without_pretraining(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` less the :class:`Pretraining` group: what rebuilds a backbone whose weights are stored."""
    group = {f.name for f in fields(Pretraining)}
    return {k: v for k, v in options.items() if k not in group}
