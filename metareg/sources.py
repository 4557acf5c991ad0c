"""Several datasets in one run (Meta-Dataset style): how a run's settings name its sources.

RunConfig holds the choice of data in one canonical form:

- one dataset (as always): ``dataset`` names it, ``dataset_options`` holds its options, ``datasets`` is empty;
- several: ``datasets`` lists them in order, each ``{"name", "weight"}``; ``dataset`` is their names joined
  by ``+`` (``glyphs+omniglot``: run directories, summaries and tables name the run by it); and every key of
  ``dataset_options`` is qualified by its dataset, ``omniglot.root``.

The options stay in ``dataset_options`` (qualified) rather than inside each entry so that they live in one
place: ``--dataset-opt omniglot.root=...`` on the command line merges with a config file key by key, as every
component's options do, and ``summary.json``/``metareg table`` see one flat mapping. A config file may still
give an entry's options inside it (``{name: omniglot, options: {root: ...}, weight: 2}``); they are moved to
qualified keys here. This module is plain data (no torch): RunConfig calls it while validating settings.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from metareg.errors import ConfigError

JOIN = "+"  # between source names in the run's `dataset` name
ENTRY_KEYS = ("name", "options", "weight")


@dataclass(frozen=True)
class Source:
    """One dataset of a run: its name as given (an alias or ``plugin:name`` too), options and sampling weight."""

    name: str
    options: dict
    weight: float = 1.0


def qualifier(name: str) -> str:
    # Option keys from the command line have their dashes turned into underscores (`--dataset-opt my-set.x=1`).
    return name.replace("-", "_")


def replaced_selection(merged: MutableMapping[str, Any], given: Mapping[str, Any]) -> None:
    """A later source of settings that names the data replaces the earlier choice of data, whichever form
    each used: a single ``dataset`` drops an earlier ``datasets`` list, and a list drops an earlier name."""
    if "dataset" in given and "datasets" not in given:
        merged.pop("datasets", None)
    if "datasets" in given and "dataset" not in given:
        merged.pop("dataset", None)


def _entry(entry: Any, i: int) -> tuple[str, dict, float]:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"datasets[{i}] must be a dataset name or a mapping with {', '.join(ENTRY_KEYS)}, "
                          f"got {entry!r}")
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        raise ConfigError(f"datasets[{i}] has the key {unknown[0]!r}; an entry takes {', '.join(ENTRY_KEYS)} "
                          "(put the dataset's own options under options:)")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or JOIN in name or "." in name:
        raise ConfigError(f"datasets[{i}] needs a name: a registered dataset (see `metareg list datasets`), "
                          f"without '{JOIN}' or '.', got {name!r}")
    options = entry.get("options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"datasets[{i}] ({name}): options must be a mapping of option names to values, "
                          f"got {options!r}")
    weight = entry.get("weight", 1.0)
    try:
        weight = float(weight) if not isinstance(weight, bool) else math.nan
    except (TypeError, ValueError):
        weight = math.nan
    if not (math.isfinite(weight) and 0 < weight <= 1e6):
        raise ConfigError(f"datasets[{i}] ({name}): weight must be a number in (0, 1e6], got {entry.get('weight')!r}; "
                          "a source's share of training episodes is its weight over the sum of the weights")
    return name, {k.replace("-", "_"): v for k, v in options.items()}, weight


def normalise(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (settings before typing) with the data named in the canonical form (module docstring).

    Refuses, in one line each: a malformed or repeated entry, an unqualified option with several datasets,
    and an option qualified by a dataset that is not in the run.
    """
    entries = values.get("datasets")
    if entries is None:
        entries = []
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"datasets must be a list of datasets (names, or mappings with {', '.join(ENTRY_KEYS)}), "
                          f"got {entries!r}")
    parsed = [_entry(e, i) for i, e in enumerate(entries)]
    names = [n for n, _, _ in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"dataset {repeated[0]!r} is listed twice in datasets; list each source once "
                          "(a dataset's options apply to all of its episodes)")
    options = dict(values.get("dataset_options") or {})
    values = dict(values)
    if len(parsed) <= 1:
        if parsed:
            name, own, _ = parsed[0]
            if "dataset" in values and values["dataset"] != name:
                raise ConfigError(f"dataset {values['dataset']!r} and datasets [{name}] name different data; "
                                  "give one of them")
            values["dataset"] = name
            options = {**own, **options}
        values["datasets"] = []
        values["dataset_options"] = _single(str(values.get("dataset", "glyphs")), options)
        return values
    joined = JOIN.join(names)
    if values.get("dataset", joined) != joined:
        raise ConfigError(f"dataset {values['dataset']!r} and datasets [{', '.join(names)}] are both given; give "
                          "datasets alone for several sources (or dataset alone for one)")
    by_qualifier = {qualifier(n): n for n in names}
    merged = {f"{qualifier(n)}.{k}": v for n, own, _ in parsed for k, v in own.items()}
    for key, value in options.items():
        owner, dot, _ = key.rpartition(".")
        if not dot:
            raise ConfigError(f"dataset option {key!r} does not say which dataset it is for, and this run has "
                              f"{len(names)} ({', '.join(names)}); qualify it: --dataset-opt {names[0]}.{key}=... "
                              f"(or {names[0]}.{key}: under dataset_options)")
        if owner not in by_qualifier:
            raise ConfigError(f"dataset option {key!r} is for dataset {owner!r}, which is not in this run "
                              f"({', '.join(names)}); qualify it with one of those names")
        merged[key] = value  # a qualified key (the command line) wins over an entry's own options
    values.update(dataset=joined, dataset_options=merged,
                  datasets=[{"name": n, "weight": w} for n, _, w in parsed])
    return values


def _single(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """One dataset's options: ``NAME.key`` (its own name) is accepted as ``key``; another qualifier is refused."""
    out = {}
    for key, value in options.items():
        owner, dot, plain = key.rpartition(".")
        if not dot:
            out.setdefault(key, value)
            continue
        if owner != qualifier(name):
            raise ConfigError(f"dataset option {key!r} is for dataset {owner!r}, which is not in this run "
                              f"(it uses {name!r} alone); drop it, or add --dataset {owner} for several sources")
        out[plain] = value  # qualified wins
    return out


def of(config) -> list[Source]:
    """The sources of a validated RunConfig, in order; one for a single-dataset run (weight 1)."""
    if not config.datasets:
        return [Source(config.dataset, dict(config.dataset_options), 1.0)]
    options: dict[str, dict] = {}
    for key, value in config.dataset_options.items():
        owner, _, plain = key.rpartition(".")
        options.setdefault(owner, {})[plain] = value
    return [Source(d["name"], options.get(qualifier(d["name"]), {}), float(d["weight"])) for d in config.datasets]


def retarget(saved: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A trained run's settings for ``metareg eval`` on other data (the cross-domain protocol).

    When ``overrides`` name the data (``dataset`` or ``datasets``), the saved options of datasets no longer
    evaluated are dropped: they describe the training data (``samples_per_class`` of glyphs means nothing to
    omniglot). A dataset evaluated again keeps its saved options, e.g. a source of a multi-source run alone.
    """
    if "dataset" not in overrides and "datasets" not in overrides:
        return dict(saved)
    before = {s.name: s.options for s in _saved_sources(saved)}
    new = normalise({k: overrides[k] for k in ("dataset", "datasets") if k in overrides})
    targets = [d["name"] for d in new["datasets"]] or [new["dataset"]]
    out = {k: v for k, v in saved.items() if k not in ("dataset", "datasets", "dataset_options")}
    out.update(dataset=new["dataset"], datasets=new["datasets"])
    if len(targets) == 1:
        out["dataset_options"] = dict(before.get(targets[0], {}))
    else:
        out["dataset_options"] = {f"{qualifier(n)}.{k}": v for n in targets for k, v in before.get(n, {}).items()}
    return out


def _saved_sources(saved: Mapping[str, Any]) -> list[Source]:
    from metareg.config import RunConfig

    keys = ("dataset", "datasets", "dataset_options")
    return of(RunConfig.from_sources({k: saved[k] for k in keys if k in saved}))
