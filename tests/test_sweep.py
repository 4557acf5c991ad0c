"""`metareg sweep` through the CLI: a 2x2 grid at a tiny budget, resuming it, and bad grids refused up front."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import metareg
from metareg.cli import cli

# glyphs at 14 px, 3-way episodes, two optimizer steps, four test episodes: seconds per member.
TINY = {"dataset_options": {"image_size": 14, "samples_per_class": 6}, "backbone_options": {"hidden": 8},
        "ways": 3, "shots": 1, "queries": 2, "test_queries": 2, "meta_batch_size": 2, "epoch_length": 2,
        "max_epochs": 1, "max_steps": 2, "test_num_tasks": 4, "val_num_tasks": 2, "eval_meta_batch_size": 4}
GRID = ["--grid", "strategy=protonet,default", "--grid", "seed=0,1"]
MEMBERS = ["strategy-protonet__seed-0", "strategy-protonet__seed-1", "strategy-default__seed-0",
           "strategy-default__seed-1"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def episodes(run: Path) -> str:
    return (run / "test_episodes.csv").read_text()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweep-config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def swept(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps") / "grid"
    result = invoke("sweep", str(base), *GRID, "-o", str(folder))
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_every_combination_runs_into_its_own_directory_with_an_index(swept):
    folder, output = swept
    index = json.loads((folder / "sweep.json").read_text())
    assert [m["name"] for m in index["members"]] == MEMBERS
    assert index["grid"] == {"strategy": ["protonet", "default"], "seed": ["0", "1"]}
    for member in index["members"]:
        assert member["status"] == "finished" and member["error"] is None
        assert member["run_dir"] == member["name"]  # relative: the folder can move
        run = folder / member["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["seed"] == int(member["overrides"]["seed"])
        # summary.json names the component the alias `protonet` stands for, with every option it ran with.
        strategy = {"protonet": "prototypicalnetworks"}.get(member["overrides"]["strategy"], "default")
        assert summary["strategy"] == summary["components"]["strategy"]["name"] == strategy
        assert summary["components"]["strategy"]["plugin"] == f"strategies:{strategy}"
        assert summary["components"]["strategy"]["options"]["temperature"] in (1.0, 0.1)  # defaults recorded too
        assert summary["components"]["backbone"]["options"]["hidden"] == 8
        assert member["accuracy"] == summary["accuracy"]
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "test_episodes.csv").is_file()
        settings = yaml.safe_load((folder / member["config"]).read_text())
        assert settings["strategy"] == member["overrides"]["strategy"] and settings["ways"] == 3
    assert output.count(": finished ") == 4 and "sweep: 4 finished" in output
    # Same seed, same test settings: every strategy was tested on the same episodes (the pairing `table` needs).
    listed = invoke("runs", str(folder))
    assert listed.exit_code == 0 and listed.output.count("finished") == 4


def test_a_second_sweep_resumes_the_interrupted_member_and_runs_the_missing_one(swept, tmp_path):
    folder, _ = swept
    copy = tmp_path / "grid"
    shutil.copytree(folder, copy)
    interrupted, missing, done = (copy / MEMBERS[0]), (copy / MEMBERS[3]), (copy / MEMBERS[1])
    for name in ("summary.json", "test_episodes.csv", "report.html", "learning_curve.png"):
        (interrupted / name).unlink(missing_ok=True)  # killed after its last checkpoint, before testing
    shutil.rmtree(missing)
    finished_before = (done / "summary.json").stat().st_mtime_ns
    status = invoke("runs", str(copy))
    assert "interrupted" in status.output
    # Two processes at once: the members run as `metareg run` subprocesses.
    result = invoke("sweep", str(_config(folder)), *GRID, "-o", str(copy), "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert f"{MEMBERS[0]}: resumed, finished" in result.output
    assert f"{MEMBERS[3]}: finished" in result.output
    assert result.output.count("skipped (finished before)") == 2
    assert (done / "summary.json").stat().st_mtime_ns == finished_before
    assert json.loads((interrupted / "summary.json").read_text())["resumed"] is True
    # Resumed or re-run in another process, each member ends on the same test results as the first sweep.
    assert episodes(interrupted) == episodes(folder / MEMBERS[0])
    assert episodes(missing) == episodes(folder / MEMBERS[3])
    index = json.loads((copy / "sweep.json").read_text())
    assert [m["status"] for m in index["members"]] == ["finished"] * 4
    # From Python, on the finished folder: nothing left to run.
    again = metareg.sweep(_config(folder), {"strategy": ["protonet", "default"], "seed": [0, 1]}, output_dir=copy)
    assert again.counts() == {"finished": 4}


def _config(folder: Path) -> Path:
    return Path(json.loads((folder / "sweep.json").read_text())["config"])


@pytest.mark.parametrize(("grid", "message"), [
    ("sed=0,1", "unknown setting 'sed'. Did you mean 'seed'?"),
    ("strategy_options.temprature=1,10", "temprature"),
    ("strategy_options.temperature=1,hot", "strategy_options.temperature=hot"),
    ("lr=0.1,-1", "lr must be"),
    ("strategy=protonet,protonett", "unknown strategy 'protonett'"),
    ("output_dir=a,b", "set by the sweep"),
    ("seed=0,0", "repeats a value"),
    ("seed", "expects KEY=VALUE"),
    ("strategy_opts.temperature=1", "a dotted key names one option"),
])
def test_a_bad_grid_is_refused_with_one_line_before_anything_is_written(base, tmp_path, grid, message):
    folder = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["sweep", str(base), "--grid", grid, "-o", str(folder)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not folder.exists()


def test_a_folder_that_is_not_a_sweep_is_refused_untouched(base, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["sweep", str(base), "--grid", "seed=0", "-o", str(folder)])
    assert result.exit_code == 2 and "holds no readable sweep.json" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_sweep_folder_is_not_continued_with_other_base_settings(swept, base, tmp_path):
    folder, _ = swept
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "ways": 4}))
    before = (folder / "sweep.json").read_text()
    result = CliRunner().invoke(cli, ["sweep", str(other), *GRID, "-o", str(folder)])
    assert result.exit_code == 2 and "other base settings (ways differ)" in result.output
    assert (folder / "sweep.json").read_text() == before


ROW = {"markdown": "| {} | 2 | ", "csv": "{},0 1,3,1,2,4,", "latex": "{} & 2 & "}


@pytest.mark.parametrize("fmt", ["markdown", "csv", "latex"])
def test_a_table_of_the_sweep_has_a_row_per_strategy_paired_against_the_baseline(swept, fmt):
    folder, _ = swept
    result = invoke("table", str(folder), "--by", "strategy", "--protocol", "3w1s", "--baseline",
                    "prototypicalnetworks", "--format", fmt)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # The grid typed the alias `protonet`; the row carries the name it stands for.
    rows = [next(line for line in lines if line.startswith(ROW[fmt].format(name)))
            for name in ("prototypicalnetworks", "default")]
    assert not any(line.startswith(ROW[fmt].format("protonet")) for line in lines)
    if fmt == "csv":
        assert rows[0].endswith(",prototypicalnetworks,,,,,")  # the baseline itself
        assert rows[1].endswith(",8")  # 2 seeds x 4 shared test episodes paired
    else:
        assert "baseline" in rows[0] and "baseline" not in rows[1] and "±" in result.output
        assert "Student's t" in result.output and "mean of the runs' own 95% CIs" in result.output


def test_a_member_that_fails_at_run_time_is_recorded_and_the_sweep_exits_1(base, tmp_path):
    # Valid settings the data cannot serve (100 queries from 6 images per class) fail in the run, not up front.
    folder = tmp_path / "failing"
    result = CliRunner().invoke(cli, ["sweep", str(base), "--grid", "queries=100", "-o", str(folder)])
    assert result.exit_code == 1, result.output
    assert "queries-100: failed: Error: " in result.output and "sweep: 1 failed" in result.output
    member = json.loads((folder / "sweep.json").read_text())["members"][0]
    assert member["status"] == "failed" and member["error"].startswith("Error: ") and "queries" in member["error"]
