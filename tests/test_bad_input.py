"""A user's mistake gets one clear line and exit status 2, before any work starts or any file is written.

Each case is typed the way a user types it (``metareg run ...`` through click's runner);
each asserts the message names the value and the way out, and that nothing was created.
"""
from __future__ import annotations

import math
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from metareg.cli import cli
from metareg.config import BOUNDS, RunConfig
from metareg.errors import ConfigError

# glyphs at 14 px with 6 renderings per class: generated once into the test cache, then fast.
DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
TINY = [*DATA, "--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2",
        "--meta-batch-size", "2", "--epoch-length", "2", "--max-epochs", "1", "--test-num-tasks", "4",
        "--val-num-tasks", "2", "--eval-meta-batch-size", "2", "--no-progress"]


def metareg(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def refused(result, *needles: str) -> str:
    """The one error line of a refused command, after checking exit status 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_refused(tmp_path: Path, *args: str, needles: tuple[str, ...]) -> str:
    out = tmp_path / "run"
    line = refused(metareg("run", *TINY, *args, "--output-dir", str(out)), *needles)
    assert not out.exists(), "a refused run must not create its run directory"
    return line


# ----------------------------------------------------------------------------- numeric settings


def _numeric(name: str) -> set[type]:
    tp = typing.get_type_hints(RunConfig)[name]
    return {a for a in (typing.get_args(tp) or (tp,)) if a in (int, float)}


NUMERIC = [f.name for f in fields(RunConfig) if _numeric(f.name)]


def test_every_numeric_setting_has_a_bound():
    # a new int or float setting without a bound would accept nan, inf or 10**40
    assert NUMERIC and set(NUMERIC) <= set(BOUNDS), sorted(set(NUMERIC) - set(BOUNDS))


def _bad_values(name: str) -> list[str]:
    bound = BOUNDS[name]
    if float in _numeric(name):
        values = ["nan", "inf", "-inf", "1e39", repr(bound.high * 2 if bound.high else 1.0)]
        values.append(repr(bound.low) if bound.low_open else repr(bound.low - 1))
    else:
        below = bound.low - 1
        while below in bound.sentinels:
            below -= 1
        values = [str(int(below)), str(int(bound.high) + 1), str(10**40)]
    return values


BAD = [(name, value) for name in NUMERIC for value in _bad_values(name)]
# the cases seen ending in a traceback
BAD += [("lr", "nan"), ("lr", "inf"), ("lr", "1e39"), ("seed", "-5"), ("momentum", "-1"),
        ("gradient_clip_val", "nan")]


@pytest.mark.parametrize("name, value", sorted(set(BAD)))
def test_numeric_setting_out_of_range_is_refused(tmp_path, name, value):
    flag = "--" + name.replace("_", "-")
    run_refused(tmp_path, flag, value, needles=(f"{name} must be", flag, "got "))


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_setting_at_its_limits_is_accepted(name):
    bound = BOUNDS[name]
    integer = float not in _numeric(name)
    low = bound.low if not bound.low_open else (bound.low + 1e-6 if not integer else bound.low + 1)
    high = bound.high if not bound.high_open else bound.high - (1 if integer else 1e-6)
    for value in (low, high, *bound.sentinels):
        text = str(int(value)) if integer else repr(float(value))
        extra = ["--max-steps", "5"] if name == "max_epochs" and value == -1 else []
        result = metareg("run", "--" + name.replace("_", "-"), text, *extra, "--print-config")
        assert result.exit_code == 0, result.output
        shown = RunConfig.from_sources({name: text, "max_steps": 5} if extra else {name: text})
        assert getattr(shown, name) == value or math.isclose(getattr(shown, name), value)


def test_config_file_values_are_checked_like_options(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("lr: .nan\n")
    run_refused(tmp_path, "--config", str(cfg), needles=("lr must be a finite number", "got nan"))


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize("content, needles", [
    (b"\xff\xfe\x00\x01\x02binary", ("exp.yaml' is not UTF-8 text", "byte 0xff at offset 0", "saved as UTF-8")),
    (b"lr: 0.1\nnote: caf\xe9\n", ("exp.yaml' is not UTF-8 text", "byte 0xe9", "saved as UTF-8")),
    (b"lr: 0.1\n\x00\x01\x02", ("exp.yaml' is not valid YAML", "unacceptable character")),
    (b"lr: [1\n", ("exp.yaml' is not valid YAML at line 2, column 1",)),
    (b"1: 2\n", ("setting names must be text, got 1",)),
    (b"strategy_options:\n  3: 1\n", ("strategy_options: option names must be text",)),
])
def test_unreadable_config_file_is_refused(tmp_path, content, needles):
    cfg = tmp_path / "exp.yaml"
    cfg.write_bytes(content)
    run_refused(tmp_path, "--config", str(cfg), needles=needles)


def test_saved_settings_errors_name_the_file():
    with pytest.raises(ConfigError, match=r"settings stored in 'x/last\.ckpt': lr must be"):
        RunConfig.from_saved({"lr": float("nan")}, "x/last.ckpt")
    with pytest.raises(ConfigError, match=r"stored in 'x/last\.ckpt' are list, not a mapping"):
        RunConfig.from_saved([1, 2], "x/last.ckpt")
    assert RunConfig.from_saved({"lr": 0.5}, "x", {"seed": 3}).seed == 3


# ----------------------------------------------------------------------------- hardware


@pytest.fixture
def no_gpu(monkeypatch):
    from metareg import hardware

    monkeypatch.setattr(hardware, "_cuda_count", lambda: 0)
    monkeypatch.setattr(hardware, "_mps_available", lambda: False)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu_is_refused(tmp_path, no_gpu, accelerator):
    run_refused(tmp_path, "--accelerator", accelerator,
                needles=(f"accelerator {accelerator!r} needs a GPU", "use --accelerator cpu"))


def test_more_gpus_than_the_machine_has_are_refused(tmp_path, monkeypatch):
    from metareg import hardware

    monkeypatch.setattr(hardware, "_cuda_count", lambda: 1)
    run_refused(tmp_path, "--accelerator", "gpu", "--devices", "4", needles=("asks for 4 GPUs", "has 1"))
    run_refused(tmp_path, "--accelerator", "gpu", "--devices", "0,2", needles=("GPU ids [0, 2]", "--devices 1"))


@pytest.mark.parametrize("name, needles", [
    ("bogus", ("trainer_strategy 'bogus' is not one of Lightning's strategies", "ddp_spawn")),
    ("dpp", ("Did you mean 'ddp'?",)),
])
def test_unknown_trainer_strategy_is_refused(tmp_path, name, needles):
    run_refused(tmp_path, "--trainer-strategy", name, needles=needles)


CLUSTER_VARIABLES = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE",
                     "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_RANK")


def test_several_nodes_without_a_cluster_are_refused_instead_of_hanging(tmp_path, monkeypatch):
    import metareg.run

    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def work_started(*args, **kwargs):
        raise AssertionError("the run started (and would wait forever for the second node) before the check")

    monkeypatch.setattr(metareg.run, "_Prepared", work_started)
    run_refused(tmp_path, "--num-nodes", "2",
                needles=("num_nodes 2 needs a cluster environment", "MASTER_ADDR", "--num-nodes 1"))


@pytest.mark.parametrize("environ, launcher", [
    ({}, None),
    ({"TORCHELASTIC_RUN_ID": "x"}, "torchrun / torchelastic"),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, "SLURM (srun)"),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "interactive"}, None),  # Lightning ignores interactive SLURM
    ({"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"}, "MASTER_ADDR and NODE_RANK"),
    ({"MASTER_ADDR": "10.0.0.1"}, None),  # without a node rank every node would think it is node 0
])
def test_cluster_launcher_is_detected_from_the_environment(environ, launcher):
    from metareg.hardware import check_nodes, cluster_launcher

    assert cluster_launcher(environ) == launcher
    if launcher is None:
        with pytest.raises(ConfigError, match="needs a cluster environment"):
            check_nodes(2, environ)
    else:
        check_nodes(2, environ)
    check_nodes(1, environ)  # one node needs no cluster
