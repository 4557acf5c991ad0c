"""metareg: a plugin-registry framework for few-shot meta-learning on images.

``import metareg`` stays light (no torch): the records and ``hookimpl`` that plugins
need to register are imported eagerly, everything that needs torch is imported on
first attribute access.
"""
from __future__ import annotations

import importlib
from typing import Any

from metareg.errors import (
    CheckpointError,
    ComponentConflict,
    ComponentNotFound,
    ConfigError,
    DataError,
    MetaregError,
    OptionError,
    PluginError,
    WriteError,
)
from metareg.files import atomic_output, atomic_write
from metareg.hookspecs import hookimpl
from metareg.records import BackboneSpec, DatasetSpec, StrategySpec, TransformSpec

__version__ = "0.1.0"

# name -> module that defines it; imported when first used.
_LAZY = {
    "Strategy": "metareg.strategy",
    "StepOutput": "metareg.strategy",
    "TaskInfo": "metareg.strategy",
    "class_means": "metareg.strategy",
    "Transform": "metareg.transform",
    "Backbone": "metareg.protocols",
    "EpochHook": "metareg.protocols",
    "Pretrained": "metareg.protocols",
    "DatasetInfo": "metareg.dataset_info",
    "Pretraining": "metareg.pretraining",
    "pretraining_options": "metareg.pretraining",
    "EpisodeBatch": "metareg.episodes",
    "EpisodeSampler": "metareg.episodes",
    "FewShotDataset": "metareg.splits",
    "ClassSplit": "metareg.splits",
    "ImageStore": "metareg.splits",
    "TensorImages": "metareg.splits",
    "LazyImages": "metareg.splits",
    "split_classes": "metareg.splits",
    "RunConfig": "metareg.config",
    "restricted_load": "metareg.safe_pickle",
    "Registry": "metareg.registry",
    "train": "metareg.run",
    "evaluate": "metareg.run",
    "RunResult": "metareg.run",
    "sweep": "metareg.sweeps",
    "prepare": "metareg.preparation",
    "Prepared": "metareg.preparation",
    "MetaLearner": "metareg.learner",
    "EpisodeDataModule": "metareg.datamodule",
    "FewShotClassifier": "metareg.predict",
    "Prediction": "metareg.predict",
    "read_image": "metareg.images",
    "check_image": "metareg.images",
    "is_image_file": "metareg.images",
    "IMAGE_SUFFIXES": "metareg.images",
}

__all__ = [
    "__version__",
    "hookimpl",
    "BackboneSpec",
    "DatasetSpec",
    "StrategySpec",
    "TransformSpec",
    "MetaregError",
    "PluginError",
    "ComponentNotFound",
    "ComponentConflict",
    "OptionError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "WriteError",
    "atomic_write",
    "atomic_output",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metareg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
