"""Resolving a RunConfig's component names and options into live objects.

Everything here happens before training starts, so a misspelt name or option fails
fast with a message that names it.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metareg import kinds
from metareg.config import RunConfig
from metareg.errors import ConfigError, MetaregError
from metareg.options import bind, describe
from metareg.records import refusal
from metareg.registry import Registry


@dataclass
class Resolved:
    """A component's factory with its validated keyword arguments."""

    kind: str
    name: str
    provider: Any  # metareg.plugins.Provided
    factory: Any
    options: dict[str, Any]

    def build(self, **injected):
        kwargs = bind(self.factory, self.options, component=f"{kinds.get(self.kind).singular} {self.name!r}",
                      injected=injected, kind=self.kind)
        try:
            return self.factory(**kwargs)
        except MetaregError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside a plugin's factory: say whose it is
            what = f"{kinds.get(self.kind).singular} {self.name!r}"
            plugin = getattr(getattr(self.provider, "plugin", None), "label", None)
            source = f" from plugin {plugin}" if plugin else ""
            if isinstance(exc, (TypeError, ValueError)):
                raise MetaregError(
                    f"{what}{source} rejected its options {self.options}: {type(exc).__name__}: {exc}"
                ) from exc
            raise MetaregError(
                f"{what}{source} failed while being built: {type(exc).__name__}: {exc}. Unless this points at "
                f"your options {self.options}, it is a bug in that plugin: report it to its authors, or choose "
                f"another {kinds.get(self.kind).singular} (`metareg list`)"
            ) from exc


def resolve(registry: Registry, kind: str, name: str, options: dict[str, Any]) -> Resolved:
    provided = registry.get(kind, name)
    try:
        factory = provided.record.load()
    except Exception as exc:  # noqa: BLE001 - report which plugin's factory cannot be imported
        raise MetaregError(
            f"{kinds.get(kind).singular} {name!r} from {provided.plugin.label} cannot be imported: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    resolved = Resolved(kind, provided.record.name, provided, factory, dict(options))
    # Validate option names and types now, before any data is loaded.
    bind(factory, resolved.options, component=f"{kinds.get(kind).singular} {provided.record.name!r}", kind=kind)
    return resolved


@dataclass
class Components:
    dataset: Resolved | None  # None when the caller supplies the dataset object itself, or with several sources
    backbone: Resolved
    transform: Resolved
    strategy: Resolved
    sources: tuple[Resolved, ...] = ()  # every dataset of the run, in order (one: `dataset` itself)

    def parts(self) -> list[Resolved]:
        """The resolved components, each source among them."""
        return [r for r in (self.dataset, self.backbone, self.transform, self.strategy) if r is not None] + (
            list(self.sources) if self.dataset is None else [])


def resolve_all(config: RunConfig, registry: Registry | None = None, *, dataset: bool = True) -> Components:
    from metareg.sources import of

    registry = registry or Registry.current()
    found = {k.singular: resolve(registry, k.plural, getattr(config, k.config_field), getattr(config, k.options_field))
             for k in kinds.ALL if k is not kinds.DATASET}
    sources = tuple(resolve(registry, "datasets", s.name, s.options) for s in of(config)) if dataset else ()
    components = Components(dataset=sources[0] if len(sources) == 1 else None, sources=sources, **found)
    # Capabilities the components declare: a combination that cannot work is refused before any data loads.
    for source in sources or (None,):
        parts = [*found.values(), *([source] if source is not None else [])]
        reason = refusal({r.kind: r.provider.record for r in parts})
        if reason:
            raise ConfigError(reason)
    _check_variable_episodes(config, registry, found["strategy"])
    return components


# What a strategy's record provides when it trains and evaluates on padded batches of variable episodes.
VARIABLE_EPISODES = "episodes:variable"


def _check_variable_episodes(config: RunConfig, registry: Registry, strategy: Resolved) -> None:
    if config.episodes != "variable" or VARIABLE_EPISODES in strategy.provider.record.provides:
        return
    able = sorted(p.record.name for p in registry.components("strategies") if VARIABLE_EPISODES in p.record.provides)
    raise ConfigError(f"strategy {strategy.name!r} cannot train on variable episodes (its record does not provide "
                      f"{VARIABLE_EPISODES!r}); use --episodes fixed, or one of: {', '.join(able) or 'none installed'}")


def build_model(components: Components, config: RunConfig, channels: int, image_size: int, num_train_classes: int,
                dataset_name: str | None = None, dataset_info: Mapping[str, Any] | None = None):
    """Backbone, strategy (set up with the backbone) and transform for a dataset's image shape.

    ``dataset_info`` (a :class:`metareg.DatasetInfo` or a checkpoint's saved dict) says whether the
    dataset's classes are ImageNet classes, for the warning about ImageNet-pretrained backbones.
    """
    from metareg.protocols import check_backbone, pretraining_leak
    from metareg.strategy import Strategy, TaskInfo
    from metareg.transform import Transform

    backbone = check_backbone(components.backbone.build(channels=channels, image_size=image_size),
                              components.backbone.name)
    feature_dim = backbone.out_features
    leak = pretraining_leak(backbone, components.backbone.name, dataset_info, dataset_name)
    if leak:
        warnings.warn(leak, stacklevel=2)
    strategy = components.strategy.build()
    if not isinstance(strategy, Strategy):
        raise MetaregError(f"strategy {components.strategy.name!r} returned {type(strategy).__name__}, "
                           "not a metareg.Strategy")
    task = TaskInfo(
        ways=config.ways, shots=config.shots, queries=config.queries,
        test_ways=config.eval_ways, test_shots=config.eval_shots, test_queries=config.eval_queries,
        num_train_classes=num_train_classes, channels=channels, image_size=image_size, feature_dim=feature_dim,
        episodes=config.episodes,
    )
    strategy.setup(backbone, task)
    transform = components.transform.build(channels=channels, image_size=image_size)
    if not isinstance(transform, Transform):
        raise MetaregError(f"transform {components.transform.name!r} returned {type(transform).__name__}, "
                           "not a metareg.Transform")
    return strategy, transform, task


def with_component_defaults(config: RunConfig, registry: Registry | None = None) -> RunConfig:
    """``config`` with each component's options checked, old names renamed and defaults shown (--print-config)."""
    from metareg.sources import qualifier

    components = resolve_all(config, registry)
    changes: dict[str, dict] = {}
    for resolved in components.parts():
        kind = kinds.get(resolved.kind)
        given = bind(resolved.factory, resolved.options, component=f"{kind.singular} {resolved.name!r}",
                     kind=resolved.kind)
        shown = {o.name: o.default for o in describe(resolved.factory, kind=resolved.kind) if not o.required} | given
        # With several sources each one's options are qualified by the name it was given under.
        prefix = qualifier(config.datasets[components.sources.index(resolved)]["name"]) + "." if (
            kind is kinds.DATASET and config.datasets) else ""
        changes.setdefault(kind.options_field, {}).update(
            {prefix + k: list(v) if isinstance(v, tuple) else v for k, v in shown.items()})
    return config.replace(**changes)
