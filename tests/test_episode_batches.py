"""Batches say what they are: the datamodule ships episodes with the geometry they were drawn with (or
labelled batches), the learner splits by that geometry, and a run's training mode is one value read from
the strategy."""
from __future__ import annotations

from importlib import metadata

import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import cli
from metareg.config import RunConfig
from metareg.datamodule import EpisodeDataModule, LabelledImages
from metareg.episodes import EpisodeGeometry, SampledEpisodes
from metareg.plugins import load_plugins, set_plugins
from metareg.registry import Registry
from metareg.strategy import TrainBatches

GLYPHS = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6", "--backbone-opt", "hidden=8",
          "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2",
          "--epoch-length", "2",
          "--max-epochs", "1", "--val-num-tasks", "3", "--test-num-tasks", "3", "--no-progress"]


@pytest.fixture(scope="module")
def data() -> metareg.FewShotDataset:
    labels = torch.arange(12).repeat_interleave(8)
    images = torch.rand(len(labels), 1, 6, 6, generator=torch.Generator().manual_seed(0))
    return metareg.FewShotDataset.from_arrays(images, labels, name="toy", ratios=(0.5, 0.25, 0.25))


def config(**settings) -> RunConfig:
    return RunConfig.from_sources({"ways": 3, "shots": 1, "queries": 2, "test_shots": 2, "test_queries": 3,
                                   "meta_batch_size": 2, "epoch_length": 4, "val_num_tasks": 5,
                                   "test_num_tasks": 7, "eval_meta_batch_size": 3, **settings})


def test_every_loader_ships_the_geometry_its_episodes_were_drawn_with(data):
    dm = EpisodeDataModule(data, config())
    dm.check()
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert isinstance(train, SampledEpisodes) and train.geometry == EpisodeGeometry(3, 1, 2)
    assert train.images.shape == (2, 3, 3, 1, 6, 6) and train.images.dtype == torch.uint8
    assert train.episode_ids is None
    for loader, count in ((dm.val_dataloader(), 5), (dm.test_dataloader(), 7)):
        batches = list(loader)
        assert {b.geometry for b in batches} == {EpisodeGeometry(3, 2, 3)}  # the evaluation geometry
        assert torch.cat([b.episode_ids for b in batches]).tolist() == list(range(count))
        assert batches[0].prepared().support.shape == (3, 6, 1, 6, 6)


def test_testing_alone_draws_no_training_batches(data):
    dm = EpisodeDataModule(data, config(num_tasks=4))  # a task pool would be drawn from the train sampler
    dm.check(("test",))
    dm.setup("test")
    assert dm.train_set is None and len(list(dm.test_dataloader())) == 3


def test_labelled_mode_draws_labelled_batches_and_spares_the_train_split_the_episode_check(data):
    big = config(shots=5, queries=5)  # 10 per class: more than the 8 each training class holds
    with pytest.raises(metareg.DataError, match="train split: class .* has 8 samples"):
        EpisodeDataModule(data, big).check()
    dm = EpisodeDataModule(data, big, train_batches=TrainBatches.LABELLED)
    dm.check()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, LabelledImages) and batch.images.shape == (2 * 3 * 10, 1, 6, 6)
    assert batch.images.dtype == torch.uint8 and set(batch.labels.tolist()) <= set(range(data.train.num_classes))
    prepared = batch.prepared(lambda x: x + 1)
    assert prepared.images.dtype == torch.float32 and float(prepared.images.min()) >= 1
    assert torch.equal(prepared.labels, batch.labels)
    with pytest.raises(ValueError, match=r"labelled batch: \(59,\) labels for images \(60, 1, 6, 6\)"):
        LabelledImages(batch.images, batch.labels[1:])


class _Labelled(metareg.Strategy):
    train_batches = "labelled"


class _Typo(metareg.Strategy):
    train_batches = "labeled"


@pytest.mark.parametrize("strategy, mode", [
    (metareg.Strategy, TrainBatches.EPISODES), (_Labelled, TrainBatches.LABELLED), (_Labelled(), "labelled"),
    (lambda: None, TrainBatches.EPISODES),  # a function factory declares nothing: episodes
])
def test_the_training_mode_is_read_from_the_strategy(strategy, mode):
    assert TrainBatches.of(strategy) is TrainBatches(mode)


def test_an_unknown_training_mode_is_refused_naming_the_strategy_and_the_choices():
    with pytest.raises(metareg.PluginError, match="strategy _Typo: train_batches must be one of 'episodes', "
                                                  "'labelled', got 'labeled'"):
        TrainBatches.of(_Typo)


@pytest.mark.parametrize("provided", Registry(load_plugins(strict=False)).components("strategies"),
                         ids=lambda p: p.qualified_name)
def test_every_registered_strategy_declares_a_training_mode(provided):
    assert TrainBatches.of(provided.record.load()) in TrainBatches


# ------------------------------------------------------------------ through `metareg run`
SEEN: list[tuple[bool, int, int]] = []


class Recording(metareg.Strategy):
    """Prototypes that note the support and query sizes of each batch they see."""

    def forward(self, episodes):
        SEEN.append((self.training, episodes.support.shape[1], episodes.query.shape[1]))
        s = episodes.support.shape[1]
        feats = self.embed(torch.cat([episodes.support, episodes.query], 1))
        return -torch.cdist(feats[:, s:], metareg.class_means(feats[:, :s], episodes.support_labels, episodes.ways))


def labelled_by_function() -> metareg.Strategy:
    """A labelled strategy built by a function: the run cannot read its mode before building it."""
    return _Labelled()


class _Plugin:
    @metareg.hookimpl
    def metareg_strategies(self):
        yield metareg.StrategySpec("recording", Recording, summary="notes episode sizes")
        yield metareg.StrategySpec("typo", _Typo, summary="misspelt train_batches")
        yield metareg.StrategySpec("hidden-mode", labelled_by_function, summary="labelled, by a function")


@pytest.fixture
def run():
    set_plugins(load_plugins(list(metadata.entry_points(group="metareg")), extra=[("h3", _Plugin())]))
    return lambda *args: CliRunner().invoke(cli, ["run", *GLYPHS, *args])


def test_the_learner_splits_by_the_geometry_each_batch_carries(run, tmp_path):
    SEEN.clear()
    result = run("--strategy", "recording", "--test-shots", "2", "--test-queries", "1",
                 "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert {s for s in SEEN if s[0]} == {(True, 3 * 1, 3 * 2)}  # training: 3-way 1-shot 2-query
    assert {s for s in SEEN if not s[0]} == {(False, 3 * 2, 3 * 1)}  # validation and test: 2-shot 1-query


def test_a_misspelt_training_mode_is_refused_before_anything_is_written(run, tmp_path):
    result = run("--strategy", "typo", "--output-dir", str(tmp_path / "t"))
    assert result.exit_code == 2, result.output
    assert "Error: strategy _Typo: train_batches must be one of 'episodes', 'labelled', got 'labeled'" in result.output
    assert not (tmp_path / "t").exists()


def test_a_mode_hidden_behind_a_factory_function_stops_the_run_instead_of_training_the_wrong_way(run, tmp_path):
    result = run("--strategy", "hidden-mode", "--output-dir", str(tmp_path / "h"))
    assert result.exit_code == 2, result.output
    assert ("Error: the strategy's train_batches is 'labelled' but the run's datamodule draws 'episodes' batches"
            in result.output)
    assert not (tmp_path / "h" / "checkpoints" / "last.ckpt").exists()
