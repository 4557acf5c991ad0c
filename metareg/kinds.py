"""The four kinds of component, one record each: every spelling of a kind is read from here.

A kind is named in many places: the registry's key and ``metareg list KIND``
(``backbones``), messages and ``metareg info KIND NAME`` (``backbone``), the record class
plugins yield (:class:`metareg.BackboneSpec`), the hook that yields it
(:func:`metareg.hookspecs.metareg_backbones`), the run setting that names the component
(``backbone``) and the one that holds its options (``backbone_options``), the flag that
sets one option (``--backbone-opt``), the options the core fills in itself, and the
contract check in :mod:`metareg.testing`. Each of those reads its spelling from
:data:`ALL`; a test (``tests/test_hookspecs.py``) checks the hooks, records and checks
named here exist.

This module imports nothing from metareg but the errors, so that :mod:`metareg.records`
(which validates ``requires`` entries against the singular names) can import it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from metareg.errors import ComponentNotFound


@dataclass(frozen=True)
class Kind:
    plural: str  # the registry's key, `metareg list backbones`, Provided.kind, each record class's `kind`
    singular: str  # messages, `metareg info backbone NAME`, `requires={"backbone:..."}`, `metareg check backbone`
    spec: str  # the record class in metareg.records
    hook: str  # the hook in metareg.hookspecs that yields those records
    config_field: str  # the RunConfig setting naming the component
    options_field: str  # the RunConfig mapping of its options
    cli_flag: str  # the command-line flag setting one option, KEY=VALUE
    # Keyword arguments the core fills in from the dataset when it builds the component: never the user's
    # options. A dataset is where channels and image size come from, so its `image_size` is an option.
    injected: tuple[str, ...]
    check: str  # the contract check in metareg.testing

    def spec_type(self) -> type:
        """The record class (imported here, not at module level: records.py imports this module)."""
        return getattr(importlib.import_module("metareg.records"), self.spec)

    def check_function(self) -> Any:
        """The contract check (imports torch)."""
        return getattr(importlib.import_module("metareg.testing"), self.check)


_FROM_DATASET = ("channels", "image_size")

DATASET = Kind(
    plural="datasets", singular="dataset", spec="DatasetSpec", hook="metareg_datasets",
    config_field="dataset", options_field="dataset_options", cli_flag="--dataset-opt",
    injected=(), check="check_dataset",
)
BACKBONE = Kind(
    plural="backbones", singular="backbone", spec="BackboneSpec", hook="metareg_backbones",
    config_field="backbone", options_field="backbone_options", cli_flag="--backbone-opt",
    injected=_FROM_DATASET, check="check_backbone",
)
TRANSFORM = Kind(
    plural="transforms", singular="transform", spec="TransformSpec", hook="metareg_transforms",
    config_field="transform", options_field="transform_options", cli_flag="--transform-opt",
    injected=_FROM_DATASET, check="check_transform",
)
STRATEGY = Kind(
    plural="strategies", singular="strategy", spec="StrategySpec", hook="metareg_strategies",
    config_field="strategy", options_field="strategy_options", cli_flag="--strategy-opt",
    injected=(), check="check_strategy",  # a strategy learns the image shape from TaskInfo in setup()
)

# In the order of a run (data, features, augmentation, algorithm): RunConfig's fields, summary.json, --help.
ALL: tuple[Kind, ...] = (DATASET, BACKBONE, TRANSFORM, STRATEGY)
# Alphabetical by plural, the order `metareg list` shows.
LISTED: tuple[Kind, ...] = tuple(sorted(ALL, key=lambda k: k.plural))
PLURALS: tuple[str, ...] = tuple(k.plural for k in LISTED)
SINGULARS: tuple[str, ...] = tuple(k.singular for k in LISTED)
_BY_NAME = {k.plural: k for k in ALL} | {k.singular: k for k in ALL}


def is_kind(name: str) -> bool:
    """Whether ``name`` names a kind, singular or plural, in any case."""
    return isinstance(name, str) and name.lower() in _BY_NAME


def get(kind: str | Kind) -> Kind:
    """The kind named ``kind`` (singular or plural, any case; a :class:`Kind` passes through)."""
    if isinstance(kind, Kind):
        return kind
    try:
        return _BY_NAME[kind.lower()]
    except (KeyError, AttributeError):
        raise ComponentNotFound(f"unknown kind {kind!r}; choose one of: {', '.join(PLURALS)}") from None
