"""Fault injection: `metareg run` killed with SIGKILL at seeded random moments.

Every time, the directory holds no corrupt file (each JSON, CSV, YAML, PNG and checkpoint
reads back), the next `metareg run --resume` (or a rerun, when the run was killed before it
wrote its settings) carries on, and the run that finally completes is bit-for-bit the
uninterrupted one: same weights, same test episodes, same learning curve rows.

Each attempt is a real process running the real CLI. Importing torch and Lightning takes
seconds per process on a small machine, which would leave twenty kills far outside the
test budget, so a server process imports them once and forks one child per attempt; the
children are killed, the server never runs any torch code itself (fork-safe).
"""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from metareg.checkpoint import read_checkpoint
from metareg.cli import cli
from metareg.rundir import LOCK
from tests.test_run import TINY

KILLS = 20
SEED = 20261129

SERVER = r"""
import json, os, signal, sys, time, traceback
import torch, pytorch_lightning, matplotlib.pyplot  # once, before any fork
import metareg.cli, metareg.run, metareg.learner, metareg.datamodule, metareg.run_writers
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            metareg.cli.main(req["args"])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if req["delay"] is not None and time.monotonic() - start >= req["delay"]:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed = True
            break
        time.sleep(0.002)
    seconds = time.monotonic() - start
    print(json.dumps({"killed": killed, "code": os.waitstatus_to_exitcode(status), "seconds": seconds}), flush=True)
"""


class Server:
    def __init__(self, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, args: list[str], delay: float | None) -> dict:
        self.proc.stdin.write(json.dumps({"args": args, "delay": delay, "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def assert_nothing_corrupt(run_dir: Path) -> None:
    """Every file metareg keeps in the directory reads back whole."""
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue  # a killed atomic write's temporary file: never read, removed by the next claim
        if path.suffix == ".json" or path.name == ".metareg-run":
            json.loads(path.read_text())
        elif path.name == LOCK:
            text = path.read_text()
            assert text == "" or isinstance(json.loads(text), dict), path
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            assert all(None not in r and None not in r.values() for r in rows), path  # no torn row
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".ckpt":
            read_checkpoint(path)  # weights-only load, metareg section present
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), path  # report.html: whole, not torn
        else:
            raise AssertionError(f"unexpected file {path}")


def moment(run_dir: Path) -> str:
    """What the killed run had written: the stage it reached, for the log."""
    names = [p.name for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
    return ", ".join(sorted(names)) or "nothing"


def outcome(run_dir: Path) -> tuple:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = sorted((r["step"], r.get("train_loss", ""), r.get("val_acc", "")) for r in csv.DictReader(f))
    return ({k: v.tolist() for k, v in state.items()}, (run_dir / "test_episodes.csv").read_text(), rows,
            sorted(p.name for p in (run_dir / "checkpoints").iterdir()))


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path):
    args = [*TINY, "--max-epochs", "3"]
    server = Server(tmp_path / "children.log")
    try:
        reference = tmp_path / "reference"
        done = server.run(["run", *args, "--output-dir", str(reference)], None)
        assert done["code"] == 0, (tmp_path / "children.log").read_text()[-3000:]
        expected, full = outcome(reference), done["seconds"]
        rng = random.Random(SEED)
        kills, attempts, run_dir, chain = 0, 0, None, 0
        while kills < KILLS:
            if run_dir is None:
                chain += 1
                run_dir = tmp_path / f"run{chain}"
            resume = (run_dir / "config.yaml").is_file()
            command = ["run", "--resume", "--output-dir", str(run_dir)] if resume else \
                ["run", *args, "--output-dir", str(run_dir)]
            result = server.run(command, rng.uniform(0, full))
            attempts += 1
            assert result["killed"] or result["code"] == 0, (command, (tmp_path / "children.log").read_text()[-3000:])
            if run_dir.exists():
                assert_nothing_corrupt(run_dir)
            kills += result["killed"]
            print(f"attempt {attempts}: {'resume' if resume else 'run'}, {'killed' if result['killed'] else 'ended'} "
                  f"after {result['seconds']:.2f} s of {full:.2f} s; holds {moment(run_dir)}")
            if not result["killed"] or kills % 5 == 0:  # a chain ends finished: resume it to the end, compare
                if (run_dir / "config.yaml").is_file():
                    last = server.run(["run", "--resume", "--output-dir", str(run_dir)], None)
                else:
                    last = server.run(["run", *args, "--output-dir", str(run_dir)], None)
                assert last["code"] == 0, (tmp_path / "children.log").read_text()[-3000:]
                assert_nothing_corrupt(run_dir)
                assert outcome(run_dir) == expected, run_dir
                assert not list(run_dir.rglob("*.tmp"))  # the claim cleared what killed writes left
                run_dir = None
            assert attempts < 4 * KILLS, "the runs keep finishing before their kill: the delays are too long"
    finally:
        server.close()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    result = CliRunner().invoke(cli, ["run", *TINY, "--max-epochs", "1", "--output-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.parametrize("name, damage", [
    ("summary.json", lambda b: b[: len(b) // 2]),
    ("metrics.csv", lambda b: b + b"1,7"),  # a row cut short
    ("checkpoints/last.ckpt", lambda b: b[: len(b) // 2]),
    ("learning_curve.png", lambda b: b[: len(b) // 2]),
    ("config.yaml", lambda b: b"[unclosed"),
    ("report.html", lambda b: b[: len(b) // 2]),
])
def test_the_corruption_check_catches_a_torn_file(finished, tmp_path, name, damage):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    assert_nothing_corrupt(run_dir)
    path = run_dir / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(Exception):  # noqa: B017 - any failure to read it back is the point
        assert_nothing_corrupt(run_dir)
