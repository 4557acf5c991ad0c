"""`metareg run` / `metareg eval` end to end on tiny budgets, through the CLI."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import cli

# glyphs at 14 px with 6 renderings per class: generated once into the test cache, then fast.
DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
TINY = [*DATA, "--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2",
        "--meta-batch-size", "2", "--epoch-length", "4", "--max-epochs", "2", "--test-num-tasks", "12",
        "--val-num-tasks", "6", "--eval-meta-batch-size", "6", "--no-progress"]
LINE = re.compile(r"^(\d+)-way (\d+)-shot: (\d+\.\d) ± (\d+\.\d) % \(95% CI, (\d+) test episodes\)$", re.M)


def run(*args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def episodes(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["episode"]): float(r["accuracy"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    result = run(*TINY, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_writes_the_run_directory_and_the_accuracy_line(trained):
    out, output = trained
    m = LINE.search(output)
    assert m, output
    assert m.group(1, 2, 5) == ("3", "1", "12")
    for name in ("config.yaml", "metrics.csv", "summary.json", "test_episodes.csv", "learning_curve.png",
                 "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 12 and summary["seed"] == 0 and summary["strategy"] == "prototypicalnetworks"
    assert f"{100 * summary['accuracy']:.1f}" == m.group(3)
    versions = summary["versions"]
    assert versions["metareg"] == metareg.__version__ and versions["torch"] == torch.__version__
    assert versions["plugins"]["metareg-datasets"] == "0.1.0"
    per_episode = episodes(out / "test_episodes.csv")
    assert sorted(per_episode) == list(range(12))
    assert abs(sum(per_episode.values()) / 12 - summary["accuracy"]) < 1e-6
    metrics = list(csv.DictReader(open(out / "metrics.csv")))
    assert sum(1 for r in metrics if r["val_acc"]) == 2  # validated after each epoch
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["metareg"]["config"]["ways"] == 3 and ckpt["epoch"] == 1


def test_eval_reproduces_the_test_episodes_of_the_run(trained, tmp_path):
    out, _ = trained
    summary = json.loads((out / "summary.json").read_text())
    best = str(out / summary["best_checkpoint"])  # relative to the run directory
    result = CliRunner().invoke(cli, ["eval", best, *DATA, "--output-dir", str(tmp_path / "e"), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert episodes(tmp_path / "e" / "test_episodes.csv") == episodes(out / "test_episodes.csv")
    # other test settings: a new protocol on the same model
    result = CliRunner().invoke(cli, ["eval", best, *DATA, "--test-shots", "2",
                                      "--test-num-tasks", "5", "--output-dir", str(tmp_path / "e2"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert LINE.search(result.output).group(1, 2, 5) == ("3", "2", "5")


def test_config_file_and_command_line_precedence(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("ways: 4\nlr: 0.01\nstrategy_options:\n  distance: cosine\n")
    result = run("--config", str(cfg), "--ways", "7", "--print-config")
    assert result.exit_code == 0
    assert "ways: 7\n" in result.output and "lr: 0.01\n" in result.output and "distance: cosine" in result.output
    result = run("--config", str(cfg), "--strategy-opt", "distance=euclidean", "--print-config")
    assert "distance: euclidean" in result.output
    cfg.write_text("num_task: 10\n")
    result = run("--config", str(cfg), "--print-config")
    assert result.exit_code == 2 and "unknown setting 'num_task'. Did you mean 'num_tasks'?" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ways", "0"], "ways must be a positive integer"),
        (["--shots", "-1"], "shots must be a positive integer"),
        (["--strategy-opt", "distanse=cosine"], "unknown option 'distanse'. Did you mean 'distance'?"),
        (["--strategy-opt", "distance=manhattan"], "is not one of euclidean, cosine"),
        (["--strategy", "protonett"], "Did you mean 'protonet'?"),
        (["--ways", "400"], "classes but 400-way episodes need at least 400"),
        (["--shots", "5", "--queries", "5"], "has 6 samples but episodes need shots + queries = 5 + 5 = 10"),
        (["--test-ways", "1000"], "validation split has"),
        (["--epoch-length", "3", "--devices", "2", "--accelerator", "cpu", "--trainer-strategy", "ddp_spawn"],
         "epoch_length 3 is not divisible by the world size 2"),
        (["--precision", "8-bit"], "precision '8-bit' is not one of"),
    ],
)
def test_bad_input_fails_before_training_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    result = run(*TINY, *args, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (out / "checkpoints").exists()


def test_existing_run_directory_is_never_overwritten(trained):
    out, _ = trained
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    result = run(*TINY, "--output-dir", str(out))
    assert result.exit_code == 2 and "already holds a run; pass --resume" in result.output
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path):
    # a random augmentation makes the test depend on the saved RNG state
    aug = ["--transform", "omniglot", "--max-epochs", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(*TINY, *aug, "--output-dir", str(straight)).exit_code == 0
    first = run(*TINY, *aug[:2], "--max-epochs", "1", "--output-dir", str(split))
    assert first.exit_code == 0, first.output
    resumed = run("--resume", "--output-dir", str(split), "--max-epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert episodes(straight / "test_episodes.csv") == episodes(split / "test_episodes.csv")
    rows = list(csv.DictReader(open(split / "metrics.csv")))
    assert sum(1 for r in rows if r["val_acc"]) == 3  # the rows from before the resume are kept
    changed = run("--resume", "--output-dir", str(split), "--max-epochs", "4", "--lr", "0.5")
    assert changed.exit_code == 2 and "lr differ" in changed.output


def test_corrupt_foreign_and_malicious_checkpoints_are_refused(trained, tmp_path):
    out, _ = trained
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(out, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    result = run("--resume", "--output-dir", str(run_dir), "--max-epochs", "3")
    assert result.exit_code == 2 and "not a readable checkpoint (corrupt or truncated?)" in result.output

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    result = CliRunner().invoke(cli, ["eval", str(foreign)])
    assert result.exit_code == 2 and "was not written by metareg" in result.output

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.ckpt"
    torch.save({"metareg": Exploit()}, evil)
    result = CliRunner().invoke(cli, ["eval", str(evil)])
    assert result.exit_code == 2 and "weights-only load refuses" in result.output
    assert not marker.exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from metareg.plugins import load_plugins, set_plugins

    class Exploding(metareg.Strategy):
        """Prototypes, until the loss turns NaN in the second epoch."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, episodes):
            feats = self.embed(torch.cat([episodes.support, episodes.query], 1))
            s, q = feats[:, : episodes.support.shape[1]], feats[:, episodes.support.shape[1]:]
            return -torch.cdist(q, metareg.class_means(s, episodes.support_labels, episodes.ways))

        def loss(self, episodes):
            out = super().loss(episodes)
            self.calls += 1
            return out._replace(loss=out.loss * float("nan")) if self.calls > 5 else out

    class Plugin:
        @metareg.hookimpl
        def metareg_strategies(self):
            yield metareg.StrategySpec("exploding", Exploding, summary="NaN after five steps")

    from importlib import metadata

    set_plugins(load_plugins(list(metadata.entry_points(group="metareg")), extra=[("exploding", Plugin())]))
    out = tmp_path / "nan"
    result = run(*TINY, "--strategy", "exploding", "--max-epochs", "3", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert "training loss is nan at step 5 (epoch 1" in result.output
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_python_api_trains_on_in_memory_arrays(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(12).repeat_interleave(8)
    centres = torch.rand(12, 1, 10, 10, generator=g)
    images = (0.8 * centres[labels] + 0.2 * torch.rand(len(labels), 1, 10, 10, generator=g))
    data = metareg.FewShotDataset.from_arrays(images, labels, name="toy", ratios=(0.5, 0.25, 0.25))
    result = metareg.train(dataset=data, output_dir=tmp_path / "api", ways=3, shots=1, queries=3, test_queries=3,
                           meta_batch_size=2, epoch_length=5, max_epochs=2, test_num_tasks=20, val_num_tasks=5,
                           progress=False, backbone_options={"hidden": 8})
    assert result.report.episodes == 20 and 0 <= result.report.mean <= 1
    assert result.summary["dataset"] == "toy"
    again = metareg.evaluate(result.best_checkpoint, dataset=data, output_dir=tmp_path / "api-eval", progress=False)
    assert again.report.mean == pytest.approx(result.report.mean)


def test_frozen_backbone_is_not_trained_until_the_schedule_unfreezes_it(tmp_path):
    from metareg.config import RunConfig

    frozen, thawed = tmp_path / "frozen", tmp_path / "thawed"
    r1 = run(*TINY, "--backbone-opt", "finetune=freeze", "--max-epochs", "1", "--output-dir", str(frozen))
    r2 = run(*TINY, "--backbone-opt", "finetune=freeze_unfreeze", "--backbone-opt", "unfreeze_epoch=1",
             "--max-epochs", "2", "--output-dir", str(thawed))
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    # the weights a run starts from: same settings, same seed
    config = RunConfig.load_yaml(frozen / "config.yaml")
    module, _ = metareg.prepare(RunConfig.from_sources(config))
    initial = {f"strategy.{k}": v for k, v in module.strategy.state_dict().items()}
    after_frozen = torch.load(frozen / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    after_thawed = torch.load(thawed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert initial.keys() == after_frozen.keys()
    assert all(torch.equal(initial[k], after_frozen[k]) for k in initial)  # nothing moved, BN statistics included
    weights = [k for k in initial if k.endswith("weight")]
    assert not any(torch.equal(initial[k], after_thawed[k]) for k in weights)  # everything trains once unfrozen


@pytest.mark.parametrize("strategy", ["maml", "anil", "metaoptnet", "default"])
def test_every_strategy_trains_and_evaluates_through_metareg_run(strategy, tmp_path):
    out = tmp_path / strategy
    result = run(*TINY, "--strategy", strategy, "--max-epochs", "1", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert LINE.search(result.output).group(1, 2, 5) == ("3", "1", "12")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == strategy and 0 <= summary["accuracy"] <= 1
    evaluated = CliRunner().invoke(cli, ["eval", str(out / "checkpoints" / "last.ckpt"), *DATA, "--test-num-tasks",
                                         "4", "--output-dir", str(tmp_path / "e"), "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output


def test_resnet12_with_the_lee2019_chain_trains(tmp_path):
    out = tmp_path / "r12"
    result = run(*DATA, "--backbone", "resnet12", "--backbone-opt", "widths=8,8,8,8", "--transform", "lee2019",
                 "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2",
                 "--epoch-length", "2", "--max-epochs", "1", "--test-num-tasks", "6", "--val-num-tasks", "3",
                 "--no-progress", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert LINE.search(result.output)
    config = (out / "config.yaml").read_text()
    assert "backbone: resnet12" in config and "transform: lee2019" in config


def test_channels_last_converts_the_convolutions_and_can_be_turned_off():
    from metareg.config import RunConfig

    # unset: the strategy's preference (maml's vmapped inner loop runs faster in the default layout)
    cases = (({}, torch.channels_last), ({"channels_last": False}, torch.contiguous_format),
             ({"strategy": "maml"}, torch.contiguous_format), ({"strategy": "maml", "channels_last": True},
                                                                torch.channels_last))
    for settings, expected in cases:
        config = RunConfig.from_sources({"dataset_options": {"image_size": 14, "samples_per_class": 6},
                                         "test_queries": 2, **settings})
        learner, _ = metareg.prepare(config)
        learner.setup("fit")
        convs = [m.weight for m in learner.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=expected) for w in convs), settings
    assert "channels_last: false" in run("--no-channels-last", "--print-config").output


def test_a_budget_shorter_than_the_logging_interval_ends_with_the_full_run_directory(tmp_path):
    out = tmp_path / "short"
    result = run(*TINY, "--epoch-length", "20", "--max-steps", "2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert LINE.search(result.output)
    for name in ("config.yaml", "summary.json", "test_episodes.csv", "learning_curve.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["step"] for r in rows if r["train_loss"]] == ["1"]  # the learning curve has its point


def test_eval_accepts_every_setting_it_offers(trained, tmp_path):
    from metareg.cli.train import eval_cmd
    from metareg.config import OPTION_SECTIONS
    from metareg.run_settings import EVAL_SETTINGS

    offered = {p.name for p in eval_cmd.params} - {"checkpoint", "dataset_opt"}
    # `datasets` (several sources) is what a repeated --dataset sets: it has no option of its own.
    assert offered == set(EVAL_SETTINGS) - set(OPTION_SECTIONS) - {"datasets"}
    out, _ = trained
    result = CliRunner().invoke(cli, ["eval", str(out / "checkpoints" / "last.ckpt"), *DATA, "--precision",
                                      "bf16-mixed", "--test-num-tasks", "3", "--output-dir", str(tmp_path / "e"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "precision: bf16-mixed" in (tmp_path / "e" / "config.yaml").read_text()


def test_resuming_a_finished_run_with_other_test_settings_points_to_eval(trained):
    out, _ = trained
    before = (out / "summary.json").read_bytes()
    result = run("--resume", "--output-dir", str(out), "--test-num-tasks", "3")
    assert result.exit_code == 2, result.output
    assert "is a finished run" in result.output and "metareg eval" in result.output
    assert (out / "summary.json").read_bytes() == before


def test_cosine_schedule_resumes_bit_for_bit_and_refuses_a_longer_budget(tmp_path, monkeypatch):
    from metareg.errors import MetaregError
    from metareg.learner import MetaLearner

    cosine = [*TINY, "--scheduler", "cosine", "--lr", "0.01"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(*cosine, "--output-dir", str(straight)).exit_code == 0
    original = MetaLearner.on_train_epoch_start

    def interrupted(self):
        if self.current_epoch == 1:
            raise MetaregError("interrupted for the test")
        original(self)

    monkeypatch.setattr(MetaLearner, "on_train_epoch_start", interrupted)
    stopped = run(*cosine, "--output-dir", str(split))
    assert stopped.exit_code == 2 and "interrupted for the test" in stopped.output
    monkeypatch.setattr(MetaLearner, "on_train_epoch_start", original)
    longer = run("--resume", "--output-dir", str(split), "--max-epochs", "3")
    assert longer.exit_code == 2 and "--scheduler cosine anneals the learning rate over the budget" in longer.output
    resumed = run("--resume", "--output-dir", str(split))
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert episodes(straight / "test_episodes.csv") == episodes(split / "test_episodes.csv")


class _Diverging(metareg.Strategy):
    """Prototypes, until training call ``AT`` makes an update diverge while the loss stays finite."""

    AT, WHAT = 0, ""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.knob = torch.nn.Parameter(torch.ones(()))

    def forward(self, episodes):
        feats = self.embed(torch.cat([episodes.support, episodes.query], 1))
        s, q = feats[:, : episodes.support.shape[1]], feats[:, episodes.support.shape[1]:]
        return -torch.cdist(q, metareg.class_means(s, episodes.support_labels, episodes.ways))

    def loss(self, episodes):
        out = super().loss(episodes)
        self.calls += 1
        if self.calls == self.AT and self.WHAT == "gradients":
            out.loss.register_hook(lambda g: g * float("inf"))
        if self.calls == self.AT and self.WHAT == "weights":
            # value unchanged, gradient 3e38 on the knob: finite, but lr x momentum x 3e38 overflows the update
            return out._replace(loss=out.loss + (self.knob - self.knob.detach()) * 3e38)
        return out


@pytest.mark.parametrize("what, at, where, last_good", [
    ("weights", 1, "weights are not finite (inf or NaN) after the update of step 0 (epoch 0)",
     "No checkpoint was saved before it: there is none to resume from"),
    ("gradients", 8, "gradients are not finite (inf or NaN) at step 7 (epoch 1)",
     "checkpoints/last.ckpt, holds the weights after 4 steps (epoch 0) and is untouched"),
])
def test_a_diverging_update_is_never_saved_and_the_last_good_checkpoint_is_named(tmp_path, what, at, where,
                                                                                last_good):
    from importlib import metadata

    from metareg.plugins import load_plugins, set_plugins

    strategy = type("Diverging", (_Diverging,), {"AT": at, "WHAT": what, "__doc__": _Diverging.__doc__})

    class Plugin:
        @metareg.hookimpl
        def metareg_strategies(self):
            yield metareg.StrategySpec("diverging", strategy, summary="a diverging update")

    set_plugins(load_plugins(list(metadata.entry_points(group="metareg")), extra=[("diverging", Plugin())]))
    out = tmp_path / what
    result = run(*TINY, "--strategy", "diverging", "--optimizer", "sgd", "--lr", "10", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert where in result.output and last_good in result.output, result.output
    saved = list(out.glob("checkpoints/*.ckpt"))
    assert len(saved) == (0 if at == 1 else 2)
    for path in saved:
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()), path


def test_the_finite_check_is_exact_for_huge_values_and_catches_every_non_finite_one():
    from metareg.learner import all_finite

    huge = torch.full((10_000,), 3.0e38)  # finite, though its float32 sum or 2-norm overflows
    assert all_finite([huge, torch.arange(3), torch.zeros(0)])
    for bad in (float("inf"), float("-inf"), float("nan")):
        assert not all_finite([huge, torch.tensor([1.0, bad])])
    assert not all_finite([torch.tensor([float("inf"), float("-inf")])])  # a sum alone would read NaN: caught too
    assert not all_finite([torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)])
