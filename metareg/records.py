"""Typed, frozen records that plugins yield from their hooks.

A record names one component and says how to build it. ``factory`` is either the
callable itself or a lazy ``"package.module:attribute"`` reference, so that listing
components never imports torch. The core adds the providing plugin when it
collects records (see :mod:`metareg.registry`); plugins never set it themselves.

Two declarations serve composition (``metareg check``, :mod:`metareg.combinations`):

* ``test_options``: the smallest valid build of the component, used by the
  combination matrix and the contract checks so that big models are tested
  quickly at a small size instead of being skipped.
* ``provides`` / ``requires``: capability strings. A ``requires`` entry reads
  ``"<kind>:<capability>"`` (``"backbone:functional"``): the component of that kind
  in the same run must list ``<capability>`` in its ``provides``. A run (and
  ``metareg check``) refuses a combination whose requirement is not provided, before
  any work starts, naming both components. The core keeps no list of names: every
  capability is declared by the plugins themselves.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Union

from metareg import kinds

Factory = Union[str, Callable[..., Any]]


@dataclass(frozen=True)
class ComponentSpec:
    """One component: a unique ``name``, how to build it, and a one-line summary.

    ``test_options``: keyword options of the smallest valid build, for tests.
    ``provides``: capabilities this component offers to the others in a run.
    ``requires``: ``"<kind>:<capability>"`` strings the other components must provide.
    """

    name: str
    factory: Factory
    summary: str = ""
    aliases: tuple[str, ...] = field(default=())
    # Options are data, not identity: left out of the hash so a record with a dict stays hashable.
    test_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    provides: frozenset[str] = field(default=frozenset())
    requires: frozenset[str] = field(default=frozenset())

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
        self._declarations()

    def _declarations(self) -> None:
        label = f"{type(self).__name__} {self.name!r}"
        if not isinstance(self.test_options, Mapping) or not all(isinstance(k, str) for k in self.test_options):
            raise ValueError(f"{label}: test_options must be a mapping of option names to values, "
                             f"got {self.test_options!r}")
        object.__setattr__(self, "test_options", MappingProxyType(dict(self.test_options)))
        for attr in ("provides", "requires"):
            value = getattr(self, attr)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{label}: {attr} must be a collection of capability strings, got {value!r}")
            object.__setattr__(self, attr, frozenset(value))
        for req in self.requires:
            kind, _, capability = req.partition(":")
            if kind not in kinds.SINGULARS or not capability:
                raise ValueError(
                    f"{label}: requires entry {req!r} must read '<kind>:<capability>' with kind one of "
                    f"{', '.join(kinds.SINGULARS)}, e.g. 'backbone:functional'"
                )

    def required_from(self, kind: str) -> frozenset[str]:
        """The capabilities this component needs from the component of ``kind`` (singular or plural)."""
        singular = kinds.get(kind).singular
        return frozenset(r.partition(":")[2] for r in self.requires if r.partition(":")[0] == singular)

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
    images to ``(N, D)`` features and carrying ``out_features = D``: a
    :class:`metareg.Backbone` (``metareg/protocols.py``). It receives the dataset's
    ``channels`` and ``image_size`` as keyword arguments."""

    kind: ClassVar[str] = kinds.BACKBONE.plural


@dataclass(frozen=True)
class StrategySpec(ComponentSpec):
    """A meta-learning algorithm. The factory returns a :class:`metareg.Strategy`."""

    kind: ClassVar[str] = kinds.STRATEGY.plural


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    """A few-shot dataset. The factory returns a :class:`metareg.FewShotDataset`
    with class-disjoint train / validation / test splits and a :class:`metareg.DatasetInfo`."""

    kind: ClassVar[str] = kinds.DATASET.plural


@dataclass(frozen=True)
class TransformSpec(ComponentSpec):
    """A batched augmentation. The factory returns a :class:`metareg.Transform`
    applied on the device to whole training batches. It receives the dataset's
    ``channels`` and ``image_size`` as keyword arguments."""

    kind: ClassVar[str] = kinds.TRANSFORM.plural



def refusal(components: Mapping[str, ComponentSpec]) -> str | None:
    """Why these components (``{kind: record}``, one per kind) cannot run together, or ``None``.

    One line naming the component that requires a capability and the one that lacks it.
    Kinds absent from ``components`` are not checked.
    """
    by_singular = {kinds.get(kind).singular: record for kind, record in components.items()}
    for kind, record in components.items():
        kind = kinds.get(kind).singular
        for req in sorted(record.requires):
            other_kind, _, capability = req.partition(":")
            other = by_singular.get(other_kind)
            if other is None or other is record or capability in other.provides:
                continue
            offered = ", ".join(sorted(other.provides)) or "nothing"
            return (
                f"{kind} {record.name!r} cannot run with {other_kind} {other.name!r}: "
                f"{record.name!r} needs a {other_kind} that provides {capability!r}, and {other.name!r} "
                f"provides {offered}; choose another {other_kind} or {kind}"
            )
    return None

