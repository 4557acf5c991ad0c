"""A two-"node" job on one machine: two `metareg run` processes, NODE_RANK 0 and 1, meeting through Lightning's
DDP (its LightningEnvironment: MASTER_ADDR, MASTER_PORT, NODE_RANK) with the gloo backend on the CPU, as the
README's multi-node commands run them on a cluster."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from metareg.cli import cli
from metareg.errors import ConfigError

DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
# 13 test episodes in batches of 6: the two nodes hold 6+1 and 6, so the gathered padding must be dropped.
TEST = ["--test-ways", "3", "--test-shots", "1", "--test-queries", "2", "--test-num-tasks", "13",
        "--eval-meta-batch-size", "6"]
TINY = [*DATA, *TEST, "--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2",
        "--meta-batch-size", "2", "--epoch-length", "4", "--max-epochs", "1", "--val-num-tasks", "6", "--no-progress"]
TWO_NODES = ["--trainer-strategy", "ddp", "--num-nodes", "2", "--devices", "1", "--accelerator", "cpu"]
# What a launcher may have left in the environment of the test process itself: each node gets only its own.
CLUSTER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE",
                     "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "METAREG_RUN_DIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metareg_command() -> list[str]:
    script = Path(sys.executable).with_name("metareg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "metareg"]


def episodes(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["episode"]): float(r["accuracy"]) for r in csv.DictReader(f)}


def run_nodes(args: list[str], cwd: Path, run_dir: Path) -> list[subprocess.CompletedProcess]:
    """Start one process per node; when one fails, stop the other (it would wait for its peer for ever).

    The second node starts once the first has claimed ``run_dir`` (its lock file names its pid), as on a
    cluster where nodes start at different times: a second node that claimed the directory too, or merely
    checked it, would find it in use.
    """
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARIABLES}
    procs = []
    for node in (0, 1):
        env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
               "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen([*metareg_command(), "run", *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        lock = run_dir / ".metareg-lock"
        while node == 0 and procs[0].poll() is None and not (lock.is_file() and lock.stat().st_size):
            time.sleep(0.2)
    outputs = {}
    try:
        while len(outputs) < 2:
            for i, p in enumerate(procs):
                if i in outputs:
                    continue
                try:
                    outputs[i] = p.communicate(timeout=1)[0]
                except subprocess.TimeoutExpired:
                    continue
                if p.returncode != 0:
                    for other in procs:
                        other.kill()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, outputs.get(i, "")) for i, p in enumerate(procs)]


@pytest.mark.slow
def test_a_two_node_job_writes_one_run_directory_with_every_test_episode(tmp_path):
    out = tmp_path / "job"
    node0, node1 = run_nodes([*TINY, *TWO_NODES, "--output-dir", str(out)], cwd=tmp_path, run_dir=out)
    # Before the fix the second node stopped at "'.../job' is in use by metareg process ...", the first waited.
    assert (node0.returncode, node1.returncode) == (0, 0), f"node 0:\n{node0.stdout}\nnode 1:\n{node1.stdout}"
    assert "2 x cpu (ddp)" in node0.stdout and "(95% CI, 13 test episodes)" in node0.stdout
    assert "test episodes" not in node1.stdout  # only global rank 0 reports
    # One run directory, and nothing written anywhere else (no runs/<time>-... of the second node).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]
    summary = json.loads((out / "summary.json").read_text())
    per_episode = episodes(out / "test_episodes.csv")
    assert sorted(per_episode) == list(range(13)) and summary["episodes"] == 13
    # Each node ran its half of the epoch: 2 steps (0, 1), not 4.
    steps = [int(r["step"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["train_loss"]]
    assert steps and max(steps) <= 1

    # One process on the same model and seed measures exactly what the two nodes gathered. (The checkpoint
    # records the job's hardware settings: one machine says so.)
    single = tmp_path / "single"
    one_process = ["--num-nodes", "1", "--devices", "1", "--trainer-strategy", "auto"]
    result = CliRunner().invoke(cli, ["eval", str(out / summary["best_checkpoint"]), *DATA, *TEST, *one_process,
                                      "--output-dir", str(single), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert episodes(single / "test_episodes.csv") == per_episode
    alone = json.loads((single / "summary.json").read_text())
    assert (alone["accuracy"], alone["ci95"], alone["episodes"]) == (summary["accuracy"], summary["ci95"], 13)


@pytest.mark.parametrize("node_rank", ["0", "1"])
def test_a_multi_node_job_without_an_output_dir_is_refused_on_every_node(tmp_path, monkeypatch, node_rank):
    """Each node would name its own runs/<time>-... directory; the first would then wait for ever."""
    import metareg.run

    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("NODE_RANK", node_rank)
    monkeypatch.chdir(tmp_path)

    def work_started(*args, **kwargs):
        raise AssertionError("the run started before the check")

    monkeypatch.setattr(metareg.run, "prepare", work_started)
    result = CliRunner().invoke(cli, ["run", *TINY, *TWO_NODES])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: this process is one of a job started by MASTER_ADDR and NODE_RANK")
    assert "pass the same --output-dir to every process" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("environ, first", [
    ({}, True),
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # started by Lightning's launcher on the first node
    ({"MASTER_ADDR": "h", "NODE_RANK": "1"}, False),  # the second node of a LightningEnvironment job
    ({"MASTER_ADDR": "h", "NODE_RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"TORCHELASTIC_RUN_ID": "j", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "4"}, True),
    # torchrun's first process on the second node: local rank 0, but not the job's first process
    ({"TORCHELASTIC_RUN_ID": "j", "RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1", "WORLD_SIZE": "4"}, False),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0"}, True),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}, False),
])
def test_the_first_process_of_a_job_is_told_from_its_launcher(environ, first):
    from metareg.hardware import first_process

    assert first_process(environ) is first


@pytest.mark.parametrize("environ, num_nodes, launcher", [
    ({}, 1, None),
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 1, None),  # Lightning's own children inherit METAREG_RUN_DIR
    ({"MASTER_ADDR": "h", "NODE_RANK": "1"}, 2, "MASTER_ADDR and NODE_RANK"),
    ({"TORCHELASTIC_RUN_ID": "j", "WORLD_SIZE": "2"}, 1, "torchrun / torchelastic"),
    ({"TORCHELASTIC_RUN_ID": "j", "WORLD_SIZE": "1"}, 1, None),  # one process: it names its own directory
    ({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}, 1, None),  # a one-task batch job, the common case
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, 2, "SLURM (srun)"),
])
def test_a_job_whose_processes_start_apart_is_recognised(environ, num_nodes, launcher):
    from metareg.hardware import started_separately

    assert started_separately(num_nodes, environ) == launcher


def test_a_one_task_slurm_job_still_names_its_own_run_directory(tmp_path, monkeypatch):
    from metareg.config import RunConfig
    from metareg.run import _run_dir

    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.chdir(tmp_path)
    path = _run_dir(RunConfig.from_sources({}), resume=False)
    assert path.parent == tmp_path / "runs"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(ConfigError, match=r"started by SLURM \(srun\).*same --output-dir"):
        _run_dir(RunConfig.from_sources({}), resume=False)
