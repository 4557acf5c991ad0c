"""Two-process DDP on CPU (ddp_spawn): disjoint training episodes, per-episode test results gathered."""
from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from metareg.cli import cli

from .test_run import DATA, TINY


def episodes(path):
    with open(path, newline="") as f:
        return {int(r["episode"]): float(r["accuracy"]) for r in csv.DictReader(f)}


def test_two_process_ddp_spawn_run_gathers_every_test_episode(tmp_path):
    out = tmp_path / "ddp"
    # 13 test episodes in batches of 6: the ranks hold 6+1 and 6 episodes, so padding must be dropped.
    result = CliRunner().invoke(cli, ["run", *TINY, "--devices", "2", "--accelerator", "cpu",
                                      "--trainer-strategy", "ddp_spawn", "--test-num-tasks", "13",
                                      "--output-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(95% CI, 13 test episodes)" in result.output
    per_episode = episodes(out / "test_episodes.csv")
    assert sorted(per_episode) == list(range(13))
    summary = json.loads((out / "summary.json").read_text())
    # each of the 2 processes ran epoch_length / 2 = 2 steps per epoch
    assert json.loads(json.dumps(summary))["episodes"] == 13
    ckpt_rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["train_loss"]]
    assert max(int(r["step"]) for r in ckpt_rows) <= 3
    # The gathered per-episode values are exactly what one process measures on the same checkpoint.
    single = CliRunner().invoke(cli, ["eval", summary["best_checkpoint"], *DATA, "--test-num-tasks", "13",
                                      "--output-dir", str(tmp_path / "single"), "--no-progress"])
    assert single.exit_code == 0, single.output
    assert episodes(tmp_path / "single" / "test_episodes.csv") == per_episode
