"""The outer optimiser's settings through `metareg run`: multi-step schedules, learning-rate multipliers of
parameter groups, Nesterov, label smoothing for every strategy, the metrics a strategy logs, 15 test queries."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

import metareg
from metareg.cli import cli
from metareg.optimization import configure
from metareg.registry import Registry
from metareg.strategy import TrainBatches

# glyphs at 14 px with 6 renderings per class (the suite's cached tiny set): test episodes need --test-queries.
DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
TINY = [*DATA, "--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2",
        "--meta-batch-size", "2", "--epoch-length", "1", "--max-epochs", "3", "--test-num-tasks", "4",
        "--val-num-tasks", "2", "--eval-meta-batch-size", "2", "--no-progress"]
SETTINGS = dict(dataset_options={"image_size": 14, "samples_per_class": 6}, backbone_options={"hidden": 8},
                ways=3, shots=1, queries=2, test_queries=2, meta_batch_size=2)
FIRST_LAYER = "backbone.features.0.*"  # Conv-4's first conv and batch norm: 4 tensors


def metareg_cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """One tiny SGD run with MetaOptNet's kind of schedule, a slower first layer and label smoothing,
    its settings split between a YAML file (lists and the mapping) and the command line."""
    tmp = tmp_path_factory.mktemp("optim")
    config = tmp / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "optimizer": "sgd", "lr": 0.1, "nesterov": False, "scheduler": "multistep",
        "milestones": [1, 2], "milestone_factors": [0.5, 0.01], "lr_multipliers": {FIRST_LAYER: 0.1},
    }))
    out = tmp / "run"
    result = metareg_cli("run", "--config", str(config), *TINY, "--label-smoothing", "0.1", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out


def metric_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_multistep_schedule_sets_each_epochs_learning_rate(scheduled):
    lrs = {int(r["epoch"]): float(r["lr"]) for r in metric_rows(scheduled) if r["lr"]}
    # factors of the base lr 0.1 after epochs 1 and 2
    assert sorted(lrs) == [0, 1, 2]
    assert [lrs[e] for e in (0, 1, 2)] == pytest.approx([0.1, 0.05, 0.001], rel=1e-6)


def test_lr_multiplier_group_follows_the_schedule(scheduled):
    ckpt = torch.load(scheduled / "checkpoints" / "last.ckpt", weights_only=True)
    first, rest = ckpt["optimizer_states"][0]["param_groups"]
    assert len(first["params"]) == 4 and first["lr_multiplier"] == 0.1
    # after the last epoch the schedule is at factor 0.01: the group keeps its tenth of it
    assert first["lr"] == pytest.approx(0.1 * 0.1 * 0.01) and rest["lr"] == pytest.approx(0.1 * 0.01)
    assert first["nesterov"] is False and rest["nesterov"] is False and rest["momentum"] == 0.9


def test_settings_are_saved_as_given(scheduled):
    saved = yaml.safe_load((scheduled / "config.yaml").read_text())
    assert saved["milestones"] == [1, 2] and saved["milestone_factors"] == [0.5, 0.01]
    assert saved["lr_multipliers"] == {FIRST_LAYER: 0.1} and saved["label_smoothing"] == 0.1
    assert saved["nesterov"] is False and saved["scheduler"] == "multistep"


def test_a_strategy_logs_its_own_metrics_for_training_and_validation(scheduled):
    rows = metric_rows(scheduled)
    train = [float(r["train/separation"]) for r in rows if r.get("train/separation")]
    val = [float(r["val/separation"]) for r in rows if r.get("val/separation")]
    assert len(train) == 3 and len(val) == 3  # one per step (epoch_length 1), one per validation epoch
    assert all(math.isfinite(v) and v > 0 for v in train + val)


def _stepped_lrs(config: metareg.RunConfig, epochs: int) -> list[list[float]]:
    """Each group's lr at the start of each epoch, stepping the schedule as Lightning does."""
    prepared = metareg.prepare(config)
    built = configure(prepared.learner.strategy, config)
    opt, sched = (built, None) if isinstance(built, torch.optim.Optimizer) else \
        (built["optimizer"], built["lr_scheduler"]["scheduler"])
    seen = []
    for _ in range(epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if sched is not None:
            sched.step()
    return seen


def test_multistep_without_factors_multiplies_by_gamma():
    config = metareg.RunConfig.from_sources(SETTINGS, {"scheduler": "multistep", "milestones": [2, 4],
                                                       "gamma": 0.1, "lr": 1.0})
    assert [lrs[0] for lrs in _stepped_lrs(config, 6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("scheduler, extra", [("step", {"step_size": 1}), ("cosine", {"max_steps": 4}),
                                              ("multistep", {"milestones": [1, 3]}), ("none", {})])
def test_every_schedule_scales_every_group(scheduler, extra):
    config = metareg.RunConfig.from_sources(SETTINGS, {"scheduler": scheduler, "lr": 1.0,
                                                       "lr_multipliers": {FIRST_LAYER: 0.25}}, extra)
    seen = _stepped_lrs(config, 4)
    assert all(backbone == pytest.approx(0.25 * rest) for backbone, rest in seen)
    assert seen[0] == pytest.approx([0.25, 1.0])
    assert (seen[-1][1] < 1.0) is (scheduler != "none")  # the schedule did move


def test_sgd_is_nesterov_unless_told_otherwise():
    for given, expected in (({}, True), ({"nesterov": False}, False)):
        config = metareg.RunConfig.from_sources(SETTINGS, {"optimizer": "sgd"}, given)
        opt = configure(metareg.prepare(config).learner.strategy, config)
        assert opt.param_groups[0]["nesterov"] is expected


# ----------------------------------------------------------------------------- label smoothing


def _training_batch(prepared):
    dm = prepared.datamodule
    dm.setup("fit")
    return next(iter(dm.train_dataloader())).prepared(prepared.learner.transform)


STRATEGIES = Registry.current().names("strategies")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_label_smoothing_reaches_every_strategys_training_loss(strategy):
    prepared = metareg.prepare(SETTINGS, strategy=strategy, label_smoothing=0.3)
    learner = prepared.learner
    learner.train()
    batch = _training_batch(prepared)
    if TrainBatches.of(learner.strategy) is TrainBatches.LABELLED:
        out = learner.strategy.labelled_loss(batch.images, batch.labels)
    else:
        out = learner.strategy.loss(batch)
    logits, labels = out.logits.flatten(0, -2).float(), out.labels.flatten()
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.3).item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_the_supervised_option_is_an_alias_of_the_setting(tmp_path):
    prepared = metareg.prepare(SETTINGS, strategy="default", strategy_options={"label_smoothing": 0.2})
    assert prepared.learner.strategy.label_smoothing == 0.2
    out = tmp_path / "run"
    result = metareg_cli("run", *TINY, "--strategy", "default", "--strategy-opt", "label_smoothing=0.2",
                         "--label-smoothing", "0.1", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert "label smoothing is given twice" in result.output and "--label-smoothing" in result.output
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, needles", [
    (["--scheduler", "multistep"], ("scheduler multistep needs --milestones",)),
    (["--milestones", "3,2"], ("milestones must be strictly increasing", "[3, 2]")),
    (["--milestones", "2,2"], ("milestones must be strictly increasing",)),
    (["--milestones", "1,x"], ("'milestones'", "expected an integer, got 'x'")),
    (["--milestones", "0,4"], ("milestones must be a list of values each a positive integer", "got 0")),
    (["--scheduler", "multistep", "--milestones", "1,2", "--milestone-factors", "0.1"],
     ("milestone_factors [0.1] do not pair with milestones [1, 2]",)),
    (["--milestone-factors", "0.5,nan"], ("milestone_factors must be", "got nan")),
    (["--optimizer", "sgd", "--momentum", "0"], ("nesterov SGD needs a momentum above 0", "--no-nesterov")),
    (["--label-smoothing", "1"], ("label_smoothing must be a finite number in [0, 1)", "got 1.0")),
    (["--lr-multiplier", "backbone.*"], ("--lr-multiplier expects PATTERN=FACTOR", "'backbone.*'")),
    (["--lr-multiplier", "backbone.*=fast"], ("expected a number, got 'fast'",)),
    (["--lr-multiplier", "backbone.*=-1"], ("lr_multipliers must be", "got -1.0", "--lr-multiplier")),
    (["--lr-multiplier", "backbone.featurs.*=0.1"],
     ("pattern 'backbone.featurs.*'", "matches no parameter", "backbone.features.0.0.weight")),
    (["--lr-multiplier", "backbone.*=0.1", "--lr-multiplier", "backbone.features.0.*=0.5"],
     ("pattern 'backbone.features.0.*'", "in the group of 'backbone.*', listed before it")),
])
def test_bad_optimisation_settings_are_refused_in_one_line(tmp_path, args, needles):
    out = tmp_path / "run"
    result = metareg_cli("run", *TINY, *args, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()


def test_no_nesterov_allows_plain_sgd_without_momentum():
    result = metareg_cli("run", "--optimizer", "sgd", "--momentum", "0", "--no-nesterov", "--print-config")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["nesterov"] is False


# ----------------------------------------------------------------------------- 15 test queries


def test_test_episodes_default_to_15_queries(tmp_path):
    at = TINY.index("--test-queries")
    unset = TINY[:at] + TINY[at + 2:]
    out = tmp_path / "run"
    result = metareg_cli("run", *unset, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    # 6 renderings per class cannot fill 1 shot + 15 queries, although training asks for 2 queries
    assert "validation split" in result.output and "1 + 15 = 16" in result.output, result.output
    assert "--test-queries" in result.output and not out.exists()


def test_test_queries_set_is_used(scheduled):
    summary = yaml.safe_load((scheduled / "summary.json").read_text())  # JSON is YAML
    assert summary["queries"] == 2
