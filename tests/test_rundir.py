"""A run directory is claimed, not assumed: locks, markers, and what metareg refuses to write into."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metareg.cli import cli
from metareg.rundir import LOCK, MARKER, RunDir, RunDirBusy, holder
from tests.test_run import DATA, TINY

ROOT = Path(__file__).resolve().parents[1]
METAREG = ROOT / ".venv" / "bin" / "metareg"


def run(*args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def evaluate(*args):
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "run"
    result = run(*TINY, "--max-epochs", "1", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_a_run_directory_is_marked_and_its_lock_released(trained):
    assert json.loads((trained / MARKER).read_text())["kind"] == "run"
    assert (trained / LOCK).read_text() == ""  # released: nobody holds it
    with RunDir.claim(trained, "run", resume=True):  # free again for whoever comes next
        assert holder(trained)["pid"] == os.getpid()


def test_a_held_run_directory_refuses_a_second_run_and_names_the_holder(tmp_path):
    out = tmp_path / "held"
    with RunDir.claim(out, "run"):
        before = snapshot(out)
        result = run(*TINY, "--output-dir", str(out))
        assert result.exit_code == 2, result.output
        assert f"is in use by metareg process {os.getpid()} on host {socket.gethostname()}" in result.output
        resumed = run("--resume", "--output-dir", str(out), *TINY)
        assert resumed.exit_code == 2 and "is in use by metareg process" in resumed.output
        assert snapshot(out) == before
    with RunDir.claim(out, "run"):  # released: claimed but never written to, so it is free for a new run
        pass


def test_the_lock_of_a_killed_process_is_free_and_its_holder_still_readable(tmp_path):
    out = tmp_path / "killed"
    code = ("import sys, time; from metareg.rundir import RunDir; r = RunDir.claim(sys.argv[1], 'run'); "
            "print('claimed', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "claimed"
        with pytest.raises(RunDirBusy, match=f"metareg process {proc.pid} on host"):
            RunDir.claim(out, "run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert holder(out)["pid"] == proc.pid  # what the dead holder recorded
    with RunDir.claim(out, "run", resume=True) as claim:  # the kernel dropped its lock
        assert holder(claim.path)["pid"] == os.getpid()


def test_two_runs_started_together_on_one_directory_one_is_refused(tmp_path):
    out = tmp_path / "race"
    cmd = [str(METAREG), "run", *TINY, "--output-dir", str(out)]
    env = {**os.environ, "METAREG_CACHE_DIR": os.environ["METAREG_CACHE_DIR"]}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outputs)
    assert codes == [0, 2], outputs
    refused = next(err for code, _, err in outputs if code == 2)
    assert "is in use by metareg process" in refused or "already holds a run" in refused, refused
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    steps = [(r["step"], r["train_loss"], r["val_acc"]) for r in rows]
    assert len(steps) == len(set(steps))  # one run's rows, not two interleaved
    assert len(list((out / "checkpoints").glob("best-*.ckpt"))) == 1


def test_a_users_folder_and_a_file_are_refused_with_nothing_touched(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("weeks of work")
    before = snapshot(folder)
    result = run(*TINY, "--output-dir", str(folder))
    assert result.exit_code == 2 and "is not empty and is not a metareg run directory" in result.output, result.output
    result = evaluate(str(trained / "checkpoints" / "last.ckpt"), *DATA, "--output-dir", str(folder))
    assert result.exit_code == 2 and "is not empty and is not a metareg eval directory" in result.output
    assert snapshot(folder) == before
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    result = run(*TINY, "--output-dir", str(a_file))
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
    assert a_file.read_text() == "keep me"


def test_a_run_that_saved_no_checkpoint_is_not_overwritten_without_a_word(tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / MARKER).write_text('{"kind": "run"}\n')
    (failed / "config.yaml").write_text("ways: 3\n")
    (failed / "metrics.csv").write_text("epoch,step,train_loss\n0,9,1.0\n")
    before = snapshot(failed)
    result = run(*TINY, "--output-dir", str(failed))
    assert result.exit_code == 2 and "saved no checkpoint" in result.output, result.output
    assert snapshot(failed) == before


def test_eval_writes_only_in_a_directory_of_its_own(trained, tmp_path):
    config = (trained / "config.yaml").read_bytes()
    last = str(trained / "checkpoints" / "last.ckpt")
    # into the run itself: refused, the run untouched
    before = snapshot(trained)
    refused = evaluate(last, *DATA, "--output-dir", str(trained), "--no-progress")
    assert refused.exit_code == 2
    assert "is a metareg run directory; `metareg eval` does not write into it" in refused.output
    assert snapshot(trained) == before
    # by default: a sub-directory of the run, marked as an evaluation
    result = evaluate(last, *DATA, "--test-num-tasks", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    results = Path(result.output.split("results: ")[1].splitlines()[0])
    assert results.parent == trained.resolve() and results.name.startswith("eval-")
    assert json.loads((results / MARKER).read_text())["kind"] == "eval"
    assert (trained / "config.yaml").read_bytes() == config
    # an evaluation's directory is not a run's, and a finished one is not overwritten
    as_run = run(*TINY, "--output-dir", str(results))
    assert as_run.exit_code == 2 and "is a metareg eval directory" in as_run.output
    again = evaluate(last, *DATA, "--output-dir", str(results), "--no-progress")
    assert again.exit_code == 2 and "already holds results" in again.output
    # and the run still resumes
    resumed = run("--resume", "--output-dir", str(trained), "--max-epochs", "2")
    assert resumed.exit_code == 0, resumed.output


def test_a_copied_run_resumes_and_tests_from_its_own_files(trained, tmp_path):
    import shutil

    import torch

    original, moved = tmp_path / "original", tmp_path / "moved"
    shutil.copytree(trained, original)
    assert run("--resume", "--output-dir", str(original), "--max-epochs", "2").exit_code == 0
    shutil.copytree(original, moved)
    for best in original.glob("checkpoints/best-*.ckpt"):
        best.write_bytes(b"changed since the copy")
    resumed = run("--resume", "--output-dir", str(moved), "--max-epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((moved / "summary.json").read_text())
    best = moved / summary["best_checkpoint"]
    assert not Path(summary["best_checkpoint"]).is_absolute() and best.is_file()
    # Lightning's checkpoint state names the run's files relative to it: nothing points at the original.
    state = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    paths = [v for s in state.values() for k, v in s.items() if k.endswith("path") or k == "dirpath"]
    paths += [k for s in state.values() for k in s.get("best_k_models", {})]
    assert paths and all("/" not in p for p in paths), paths
    # and its result is the one its own best checkpoint gives
    check = evaluate(str(best), *DATA, "--output-dir", str(tmp_path / "check"), "--no-progress")
    assert check.exit_code == 0, check.output
    with open(moved / "test_episodes.csv") as a, open(tmp_path / "check" / "test_episodes.csv") as b:
        assert a.read() == b.read()


@pytest.mark.slow
def test_processes_the_ddp_launcher_starts_work_under_their_parents_claim(trained, tmp_path):
    """Lightning's ddp launcher re-executes the command line; the second process must not claim the directory."""
    import shutil

    out = tmp_path / "ddp"
    shutil.copytree(trained, out)
    cmd = [str(METAREG), "run", "--resume", "--output-dir", str(out), "--max-epochs", "3", "--devices", "2",
           "--accelerator", "cpu", "--trainer-strategy", "ddp"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stderr
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
    assert (out / LOCK).read_text() == ""  # released by the parent when the run ended


def test_a_run_killed_between_its_best_and_last_checkpoints_resumes_without_a_second_best(tmp_path):
    # The state a kill leaves between the two saves of epoch 1: last.ckpt from epoch 0, best-1-* already on disk.
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(*TINY, "--max-epochs", "2", "--output-dir", str(whole)).exit_code == 0
    assert run(*TINY, "--max-epochs", "1", "--output-dir", str(cut)).exit_code == 0
    best = {p.name for p in (whole / "checkpoints").glob("best-*.ckpt")}
    if not any(name.startswith("best-1-") for name in best):
        pytest.skip(f"epoch 1 was not the best in this tiny run ({best}); the case does not arise")
    for name in best:
        (cut / "checkpoints" / name).write_bytes((whole / "checkpoints" / name).read_bytes())
    resumed = run("--resume", "--output-dir", str(cut), *TINY, "--max-epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert {p.name for p in (cut / "checkpoints").glob("*.ckpt")} == best | {"last.ckpt"}
