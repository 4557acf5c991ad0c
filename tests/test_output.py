"""What `metareg run` and `metareg eval` print: a start line and the result, Lightning's noise only with -v.

Through `.venv/bin/metareg` as a subprocess, stdout and stderr together: Lightning writes through its
own logging handler and from the processes it starts, which CliRunner does not capture.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_run import DATA, LINE, TINY

METAREG = str(Path(sys.executable).with_name("metareg"))
BANNERS = ("GPU available:", "TPU available:")
START = re.compile(
    r"^training: prototypicalnetworks \+ conv4 on glyphs, transform none \| 3-way 1-shot, 2 queries, "
    r"2 episodes/step, (?P<budget>\d+ epochs? of 4 steps) \| test: (?P<tests>\d+) episodes, 3-way 1-shot, 2 queries "
    r"\| cpu \| (?P<dir>/.+)$"
)
EVAL_START = re.compile(
    r"^evaluating (?P<ckpt>.+\.ckpt): prototypicalnetworks \+ conv4 on glyphs \| test: (?P<tests>\d+) episodes, "
    r"3-way 1-shot, 2 queries \| (?P<device>cpu|2 x cpu \(ddp_spawn\)) \| (?P<dir>/.+)$"
)


def metareg(*args: str) -> list[str]:
    # Without the switches a developer may have set: the output under test is the default one.
    env = {k: v for k, v in os.environ.items() if k not in ("METAREG_VERBOSE", "PYTHONWARNINGS")}
    done = subprocess.run([METAREG, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert done.returncode == 0, done.stdout
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("output") / "run"
    return out, metareg("run", *TINY, "--accelerator", "cpu", "--output-dir", str(out))


def test_a_run_prints_a_start_line_its_directory_and_the_result(run_output):
    out, lines = run_output
    assert len(lines) == 3, "\n".join(lines)
    start = START.match(lines[0])
    assert start, lines[0]
    assert start["budget"] == "2 epochs of 4 steps" and start["tests"] == "12" and start["dir"] == str(out)
    assert lines[1] == f"run directory: {out}"
    assert LINE.match(lines[2]).group(1, 2, 5) == ("3", "1", "12")


def test_eval_prints_the_same_shape_and_warnings_about_the_users_settings(run_output, tmp_path):
    out, _ = run_output
    ckpt = str(out / "checkpoints" / "last.ckpt")
    # fp16 AMP on a CPU: Lightning's warning concerns a setting the user chose, so it stays.
    lines = metareg("eval", ckpt, *DATA, "--no-progress", "--accelerator", "cpu", "--precision", "16-mixed",
                    "--test-num-tasks", "5", "--output-dir", str(tmp_path / "e"))
    assert len(lines) == 4, "\n".join(lines)
    assert "precision='16-mixed')` but AMP with fp16 is not supported on CPU" in lines[0]
    start = EVAL_START.match(lines[1])
    assert start, lines[1]
    assert start.group("ckpt", "tests", "device", "dir") == (ckpt, "5", "cpu", str(tmp_path / "e"))
    assert lines[2] == f"results: {tmp_path / 'e'}"
    assert LINE.match(lines[3]).group(1, 2, 5) == ("3", "1", "5")


@pytest.mark.parametrize("command", ["run", "eval"])
def test_verbose_shows_lightnings_banners_again(run_output, tmp_path, command):
    out, _ = run_output
    if command == "run":
        args = ["run", *TINY, "--max-epochs", "1", "--test-num-tasks", "3"]
    else:
        args = ["eval", str(out / "checkpoints" / "last.ckpt"), *DATA, "--no-progress", "--test-num-tasks", "3"]
    lines = metareg("-v", *args, "--accelerator", "cpu", "--output-dir", str(tmp_path / "o"))
    text = "\n".join(lines)
    for banner in BANNERS:
        assert banner in text
    assert "Tip:" in text
    # ... and what the quiet output says is still there, unchanged
    start = START if command == "run" else EVAL_START
    assert any(start.match(line) for line in lines), text
    assert LINE.search(text), text
    assert len(lines) > 3


def test_processes_that_ddp_spawn_starts_are_quiet(run_output, tmp_path):
    out, _ = run_output
    ckpt = str(out / "checkpoints" / "last.ckpt")
    lines = metareg("eval", ckpt, *DATA, "--no-progress", "--accelerator", "cpu", "--devices", "2",
                    "--trainer-strategy", "ddp_spawn", "--test-num-tasks", "4", "--output-dir", str(tmp_path / "e"))
    assert len(lines) == 3, "\n".join(lines)  # no "Initializing distributed", no deprecations from either process
    assert EVAL_START.match(lines[0])["device"] == "2 x cpu (ddp_spawn)"
    assert lines[1] == f"results: {tmp_path / 'e'}"
    assert LINE.match(lines[2]).group(5) == "4"
