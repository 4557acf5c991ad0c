"""Everything a run needs, built and checked before any work: the one way to prepare one.

``metareg run`` (:func:`metareg.train`), ``metareg eval`` (:func:`metareg.evaluate`) and
a user's own Lightning ``Trainer`` all start from :func:`prepare`: the settings are
validated, the components resolved in the registry, the dataset built and checked
against the episode shapes, the model built (or taken from a checkpoint), and the result
is the LightningModule (:class:`metareg.MetaLearner`) and LightningDataModule
(:class:`metareg.EpisodeDataModule`) that a ``Trainer`` fits and tests::

    module, data = metareg.prepare(strategy="prototypicalnetworks", ways=5, shots=1)
    pytorch_lightning.Trainer(max_epochs=1, inference_mode=False).fit(module, datamodule=data)
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from metareg.config import RunConfig
from metareg.errors import ConfigError, MetaregError

SPLITS = ("train", "validation", "test")


@dataclass
class Prepared:
    """A prepared run; unpacks as ``module, datamodule`` for ``Trainer.fit(module, datamodule=datamodule)``."""

    config: RunConfig
    registry: Any  # metareg.Registry the components came from (its plugins go into summary.json)
    dataset: Any  # metareg.FewShotDataset
    datamodule: Any  # metareg.EpisodeDataModule
    learner: Any  # metareg.MetaLearner, the LightningModule

    def __iter__(self) -> Iterator:
        return iter((self.learner, self.datamodule))


def run_config(config: RunConfig | dict | None, dataset: Any, settings: dict[str, Any]) -> tuple[RunConfig, Any]:
    """``config`` (a RunConfig, a dict or None) with ``settings`` applied, and the dataset object, if any.

    ``dataset`` is a registered name (a setting like any other) or a :class:`metareg.FewShotDataset`,
    whose name then becomes the run's ``dataset`` setting; a list of them are the sources of one run.
    """
    if isinstance(dataset, str):
        settings = {**settings, "dataset": dataset}
        dataset = None
    if isinstance(dataset, (list, tuple)):
        from metareg.source_mixing import SourceData, combine

        dataset = combine([SourceData(d.name, d) for d in dataset]) if len(dataset) > 1 else dataset[0]
    if isinstance(config, RunConfig):
        config = config.replace(**settings) if settings else config
    else:
        config = RunConfig.from_sources(config or {}, settings)
    if dataset is not None:
        named = [{"name": s.name, "weight": s.weight} for s in getattr(dataset, "sources", ())]
        # The data object replaces the named data; options of named sources would describe none of it.
        cleared = {"dataset_options": {}} if config.datasets or named else {}
        config = config.replace(**({"datasets": named} if named else {"dataset": dataset.name}), **cleared)
    return config, dataset


def prepare(config: RunConfig | dict | None = None, registry=None, dataset=None, *, model=None,
            **settings) -> Prepared:
    """Validate the settings and build the LightningModule and LightningDataModule of a run.

    ``config`` is a :class:`metareg.RunConfig` or a dict of settings; keyword ``settings`` override it
    (``metareg.prepare(strategy="maml", ways=5)``). ``registry`` (default: the installed plugins,
    ``Registry.current()``) resolves the component names. ``dataset`` is a registered name or a
    :class:`metareg.FewShotDataset` built in Python. ``model`` (a model loaded from a checkpoint) is
    evaluated instead of building a new one: only the test split is then checked.

    Every check happens here, before any training: a misspelt name or option, an episode shape the
    dataset cannot fill, an image size the model was not trained on.
    """
    from metareg.build import build_model, resolve_all
    from metareg.datamodule import EpisodeDataModule
    from metareg.learner import MetaLearner
    from metareg.registry import Registry
    from metareg.strategy import TrainBatches

    config, dataset = run_config(config, dataset, settings)
    registry = registry or Registry.current()
    if model is None:
        components = resolve_all(config, registry, dataset=dataset is None)
    if dataset is None:
        dataset = build_data(config, registry, components.sources if model is None else None)
    if model is None:
        datamodule = EpisodeDataModule(dataset, config, train_batches=TrainBatches.of(components.strategy.factory))
        datamodule.check(SPLITS)
        _seed_everything(config.seed)
        strategy, transform, task = build_model(
            components, config, dataset.channels, dataset.image_size, dataset.train.num_classes,
            dataset_name=config.dataset, dataset_info=dataset.info,
        )
        info = dataset.info
    else:
        if (dataset.channels, dataset.image_size) != (model.channels, model.image_size):
            raise ConfigError(
                f"dataset {config.dataset!r} has {dataset.channels}x{dataset.image_size}px images but the model "
                f"was trained on {model.channels}x{model.image_size}px; set the dataset's image_size option"
            )
        datamodule = EpisodeDataModule(dataset, config)  # testing draws episodes, whatever the model trained on
        datamodule.check(("test",))
        strategy, transform, task = model.strategy, model.transform, model.task
        info = model.meta["data"].get("info", {})  # what the training data was, as the checkpoint recorded it
    learner = MetaLearner(strategy, transform, config, task, config.dataset, info)
    learner.sources = datamodule.source_names  # results per source when there are several
    return Prepared(config, registry, dataset, datamodule, learner)


def build_data(config: RunConfig, registry=None, factories=None):
    """The run's data as ``config`` names it: its dataset, or its sources combined into one
    (:class:`metareg.source_mixing.MultiSourceDataset`). ``factories`` (resolved already) or ``registry``."""
    from metareg.build import resolve
    from metareg.registry import Registry
    from metareg.source_mixing import SourceData, combine
    from metareg.sources import of
    from metareg.splits import FewShotDataset

    named = of(config)
    if factories is None:
        registry = registry or Registry.current()
        factories = [resolve(registry, "datasets", s.name, s.options) for s in named]
    built = []
    for source, factory in zip(named, factories, strict=True):
        built.append(factory.build())
        if not isinstance(built[-1], FewShotDataset):
            raise MetaregError(f"dataset {source.name!r} returned {type(built[-1]).__name__}, "
                               "not a metareg.FewShotDataset")
    if len(built) == 1:
        return built[0]
    return combine([SourceData(s.name, d, s.weight) for s, d in zip(named, built, strict=True)])


def _seed_everything(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
