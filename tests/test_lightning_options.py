"""Lightning passes through: --trainer-opt / trainer_options:, --logger, metareg.train(callbacks=, logger=)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger

import metareg
from metareg import trainer_options
from metareg.cli import cli
from tests.test_run import TINY

# TINY trains 2 epochs of 4 meta-batches: 8 optimizer steps without accumulation.
TINY_STEPS = 8


def run(*args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def global_step(out) -> int:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["global_step"]


class CountSteps(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


@pytest.fixture(scope="module")
def python_run(tmp_path_factory):
    """A tiny run through metareg.train with a user callback and logger: the baseline step count."""
    out = tmp_path_factory.mktemp("py") / "run"
    mine = CSVLogger(tmp_path_factory.mktemp("mine"), name="", version="")
    counter = CountSteps()
    settings = dict(dataset_options={"image_size": 14, "samples_per_class": 6}, backbone_options={"hidden": 8},
                    ways=3, shots=1, queries=2, test_queries=2, meta_batch_size=2, epoch_length=4, max_epochs=2,
                    test_num_tasks=12,
                    val_num_tasks=6, eval_meta_batch_size=6, progress=False, output_dir=str(out))
    result = metareg.train(settings, callbacks=[counter], logger=mine)
    return out, result, counter, mine


def test_a_user_callback_passed_to_train_is_called(python_run):
    out, result, counter, _ = python_run
    assert counter.batches == TINY_STEPS
    assert global_step(out) == TINY_STEPS and result.report.episodes == 12


def test_a_user_logger_passed_to_train_logs_beside_metrics_csv(python_run):
    out, _, _, mine = python_run
    logged = (Path(mine.log_dir) / "metrics.csv").read_text()
    assert "train_loss" in logged and "val_acc" in logged
    assert "train_loss" in (out / "metrics.csv").read_text()  # metareg's own log is still written


def test_accumulate_grad_batches_halves_the_optimizer_steps(tmp_path, python_run):
    out = tmp_path / "run"
    result = run(*TINY, "--trainer-opt", "accumulate_grad_batches=2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert global_step(out) == TINY_STEPS // 2
    assert global_step(python_run[0]) == TINY_STEPS  # the same run without the option
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trainer_options"] == {"accumulate_grad_batches": 2}  # an int, not the text "2"


def test_trainer_options_from_the_config_file_reach_the_trainer(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer_options:\n  limit_train_batches: 2\n")
    out = tmp_path / "run"
    result = run(*TINY, "--config", str(config), "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert global_step(out) == 2 * 2  # 2 epochs of 2 batches


@pytest.mark.parametrize(("where", "message"), [
    ("cli", "unknown trainer option 'accumulate_grad_bathces': pytorch_lightning.Trainer has no such argument. "
            "Did you mean 'accumulate_grad_batches'?"),
    ("file", "unknown trainer option 'accumulate_grad_bathces'"),
    ("reserved", "trainer option 'max_epochs' is set by metareg; use --max-epochs instead"),
    ("reserved-logger", "trainer option 'logger' is set by metareg; use --logger"),
])
def test_bad_trainer_options_are_refused_before_any_work(tmp_path, where, message):
    out = tmp_path / "run"
    args = {"cli": ["--trainer-opt", "accumulate_grad_bathces=2"],
            "reserved": ["--trainer-opt", "max_epochs=3"],
            "reserved-logger": ["--trainer-opt", "logger=false"]}.get(where)
    if where == "file":
        (tmp_path / "c.yaml").write_text("trainer_options:\n  accumulate_grad_bathces: 2\n")
        args = ["--config", str(tmp_path / "c.yaml")]
    result = run(*TINY, *args, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_every_trainer_argument_metareg_sets_is_reserved_and_named():
    # RESERVED must follow make_trainer: a Trainer argument metareg sets and a user could also pass would be ambiguous.
    import inspect

    from metareg.lightning_trainer import make_trainer

    source = inspect.getsource(make_trainer)
    call = source[source.index("pl.Trainer("):]
    passed = {name for name in trainer_options.trainer_parameters() if f"\n            {name}=" in call}
    assert passed and passed <= set(trainer_options.RESERVED), passed - set(trainer_options.RESERVED)


@pytest.mark.parametrize("name", [n for n in trainer_options.LOGGERS if trainer_options.LOGGERS[n]])
def test_a_logger_whose_package_is_missing_says_how_to_install_it(tmp_path, monkeypatch, name):
    module, package = trainer_options.LOGGERS[name]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    out = tmp_path / "run"
    result = run(*TINY, "--logger", name, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert f"Error: --logger {name} needs the {package!r} package" in result.output
    assert f"pip install {package}" in result.output
    assert not out.exists()


def test_tensorboard_writes_event_files_in_the_run_directory(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    out = tmp_path / "run"
    result = run(*TINY, "--logger", "tensorboard", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "metrics.csv").is_file()  # metareg's own log stays


def test_fast_dev_run_trains_and_tests_one_batch(tmp_path):
    out = tmp_path / "run"
    result = run(*TINY, "--trainer-opt", "fast_dev_run=true", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "6 test episodes" in result.output  # one test batch of --eval-meta-batch-size 6


def test_a_profiler_named_by_text_reports_into_the_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run(*TINY, "--trainer-opt", "profiler=simple", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "FIT Profiler Report" in (out / "fit-profile.txt").read_text()


@pytest.mark.parametrize(("option", "message"), [
    ("profiler=fancy", "trainer option profiler='fancy' is not one of simple, advanced, pytorch"),
    ("limit_train_batches=2.5", "Lightning refused the trainer options (limit_train_batches=2.5): You have passed "
                                "invalid value 2.5 for limit_train_batches"),
])
def test_a_value_lightning_would_reject_is_one_line_and_writes_nothing(tmp_path, option, message):
    out = tmp_path / "run"
    result = run(*TINY, "--trainer-opt", option, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert f"Error: {message}" in result.output and "Traceback" not in result.output
    assert not out.exists()
