"""Typed, frozen records that plugins yield from their hooks.

A record names one component and says how to build it. ``factory`` is either the
callable itself or a lazy ``"package.module:attribute"`` reference, so that listing
components never imports torch. The core adds the providing plugin when it
collects records (see :mod:`metareg.registry`); plugins never set it themselves.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

Factory = Union[str, Callable[..., Any]]

KINDS = ("backbones", "datasets", "strategies", "transforms")
SINGULAR = {"backbones": "backbone", "datasets": "dataset", "strategies": "strategy", "transforms": "transform"}


@dataclass(frozen=True)
class ComponentSpec:
    """One component: a unique ``name``, how to build it, and a one-line summary."""

    name: str
    factory: Factory
    summary: str = ""
    aliases: tuple[str, ...] = field(default=())

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise ValueError(f"{type(self).__name__} name must be a non-empty string without ':', got {self.name!r}")
        if isinstance(self.factory, str):
            if self.factory.count(":") != 1 or not all(self.factory.split(":")):
                raise ValueError(
                    f"{type(self).__name__} {self.name!r}: a lazy factory must look like 'package.module:attribute', "
                    f"got {self.factory!r}"
                )
        elif not callable(self.factory):
            raise ValueError(f"{type(self).__name__} {self.name!r}: factory must be callable or 'module:attribute'")
        # Accept a list for convenience but store a tuple so the record stays hashable.
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if "\n" in self.summary:
            raise ValueError(f"{type(self).__name__} {self.name!r}: summary must be one line")

    def load(self) -> Callable[..., Any]:
        """Return the factory callable, importing a lazy reference on first use."""
        if not isinstance(self.factory, str):
            return self.factory
        module_name, attr = self.factory.split(":")
        module = importlib.import_module(module_name)
        try:
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{self.factory!r}: module {module_name!r} has no attribute {attr!r}") from None
        return obj

    @property
    def factory_ref(self) -> str:
        """The factory as a ``module:attribute`` string, for display."""
        if isinstance(self.factory, str):
            return self.factory
        return f"{self.factory.__module__}:{self.factory.__qualname__}"


@dataclass(frozen=True)
class BackboneSpec(ComponentSpec):
    """A feature extractor. The factory returns an ``nn.Module`` mapping ``(N, C, H, W)``
    images to ``(N, D)`` features and carrying ``out_features = D``. It receives the
    dataset's ``channels`` and ``image_size`` as keyword arguments."""

    kind: ClassVar[str] = "backbones"


@dataclass(frozen=True)
class StrategySpec(ComponentSpec):
    """A meta-learning algorithm. The factory returns a :class:`metareg.Strategy`."""

    kind: ClassVar[str] = "strategies"


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    """A few-shot dataset. The factory returns a :class:`metareg.FewShotDataset`
    with class-disjoint train / validation / test splits."""

    kind: ClassVar[str] = "datasets"


@dataclass(frozen=True)
class TransformSpec(ComponentSpec):
    """A batched augmentation. The factory returns a :class:`metareg.Transform`
    applied on the device to whole training batches. It receives the dataset's
    ``channels`` and ``image_size`` as keyword arguments."""

    kind: ClassVar[str] = "transforms"


SPEC_TYPES: dict[str, type[ComponentSpec]] = {
    cls.kind: cls for cls in (BackboneSpec, DatasetSpec, StrategySpec, TransformSpec)
}
