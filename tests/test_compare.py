"""`metareg runs` and `metareg compare` over fabricated run directories, and the t-based 95% interval."""
from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metareg import compare
from metareg.cli import cli
from metareg.evaluation import summarise, t_cdf, t_quantile


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def make_run(path: Path, accuracies: dict[int, float] | None, *, state: str = "finished", seed: int = 0,
             ways: int = 5, shots: int = 1, queries: int = 5, steps: int = 8, reverse_rows: bool = False,
             dataset_options: dict | None = None) -> Path:
    """A run directory as metareg leaves it, written by hand (no training)."""
    path.mkdir(parents=True)
    (path / ".metareg-run").write_text(json.dumps({"kind": "run", "metareg_version": "0.1.0"}) + "\n")
    (path / ".metareg-lock").write_text("")
    config = {"dataset": "glyphs", "dataset_options": dataset_options or {"image_size": 14}, "backbone": "conv4",
              "strategy": "prototypicalnetworks", "ways": ways, "shots": shots, "queries": queries,
              "test_ways": None, "test_shots": None, "test_queries": None,
              "test_num_tasks": len(accuracies) if accuracies else 600, "seed": seed}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / "metrics.csv").write_text("epoch,step,train_loss,val_acc\n"
                                      + "".join(f"0,{s},1.0,\n" for s in range(1, steps, 2)) + f"0,{steps - 1},,0.5\n")
    if state in ("finished", "interrupted", "running"):
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.ckpt").write_bytes(b"not read by these commands")
    if accuracies is not None:
        rows = sorted(accuracies.items(), reverse=reverse_rows)
        lines = "".join(f"{i},{float(a):.6f}\n" for i, a in rows)  # as metareg writes them
        (path / "test_episodes.csv").write_text("episode,accuracy\n" + lines)
    if state == "finished":
        report = summarise(accuracies.values(), ways, shots, queries)
        summary = {**report.as_dict(), "line": report.line(), "seed": seed, "dataset": "glyphs",
                   "backbone": "conv4", "transform": "none", "strategy": "prototypicalnetworks",
                   "train_seconds": 12.5, "wall_seconds": 3725.0}
        (path / "summary.json").write_text(json.dumps(summary))
    return path


# ---------------------------------------------------------------- Student's t


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (4, 2.776), (19, 2.093), (29, 2.045), (599, 1.964)])
def test_t_quantile_matches_printed_tables(df, table):
    assert round(t_quantile(0.975, df), 3) == table
    assert abs(t_cdf(t_quantile(0.975, df), df) - 0.975) < 1e-12
    assert t_quantile(0.025, df) == -t_quantile(0.975, df)


def test_t_distribution_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 24, 120, 5000):
        for t in (-9.0, -2.1, -0.3, 0.0, 0.7, 1.96, 4.5):
            assert abs(t_cdf(t, df) - stats.t.cdf(t, df)) < 1e-10, (t, df)
        for p in (0.6, 0.9, 0.975, 0.999):
            assert abs(t_quantile(p, df) - stats.t.ppf(p, df)) < 1e-8 * max(1.0, stats.t.ppf(p, df))


def test_the_interval_of_five_episodes_uses_t_not_z():
    # mean 0.6, sample sd sqrt(0.025) = 0.158114, se 0.070711; t(0.975, 4) = 2.776445 -> 0.196324 (z would give 0.1386)
    report = summarise([0.4, 0.5, 0.6, 0.7, 0.8], 5, 1, 5)
    assert abs(report.mean - 0.6) < 1e-12
    assert abs(report.ci95 - 0.196324) < 1e-6
    assert math.isnan(summarise([0.5], 5, 1, 5).ci95)


# ---------------------------------------------------------------- metareg runs


def test_runs_lists_finished_interrupted_failed_and_running(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a-finished", {i: 0.5 + 0.01 * (i % 3) for i in range(10)}, steps=30)
    make_run(root / "b-interrupted", None, state="interrupted")
    make_run(root / "c-failed", None, state="failed")
    running = make_run(root / "d-running", None, state="running")
    (root / "notes").mkdir()  # a user's folder: not a run, not listed
    fd = os.open(running / ".metareg-lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live `metareg run` holds it
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": "here", "started": 0}).encode(), 0)
        result = invoke("runs", str(root), "--json")
        table = invoke("runs", str(root))
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    rows = {r["run"]: r for r in json.loads(result.output)["runs"]}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a-finished": "finished", "b-interrupted": "interrupted", "c-failed": "failed", "d-running": "running"}
    done = rows["a-finished"]
    assert (done["strategy"], done["backbone"], done["dataset"], done["ways"], done["shots"]) == (
        "prototypicalnetworks", "conv4", "glyphs", 5, 1)
    assert done["steps"] == 30 and done["wall_seconds"] == 3725.0 and done["episodes"] == 10
    assert rows["b-interrupted"]["accuracy"] is None and rows["b-interrupted"]["steps"] == 8
    lines = table.output.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "STRATEGY", "BACKBONE", "DATASET", "WAYS/SHOTS", "ACCURACY", "STEPS",
                                "WALL"]
    finished = next(line for line in lines if line.startswith("a-finished"))
    acc = 100 * done["accuracy"]
    assert f"{acc:.1f} ± {100 * done['ci95']:.1f} %" in finished and "5w1s" in finished and "1h02m" in finished
    only = json.loads(invoke("runs", str(root / "a-finished"), "--json").output)["runs"]
    assert [r["run"] for r in only] == ["a-finished"]
    # Once the process holding the lock is gone, the same directory is an interrupted run.
    after = json.loads(invoke("runs", str(root), "--json").output)
    assert {r["run"]: r["status"] for r in after["runs"]}["d-running"] == "interrupted"


def test_runs_refuses_a_missing_directory_and_imports_no_torch(tmp_path):
    result = invoke("runs", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "is not a directory" in result.output
    make_run(tmp_path / "runs" / "one", {0: 0.5, 1: 0.7})
    code = ("import sys; from metareg.cli import main\n"
            "try:\n    main(['runs', sys.argv[1]])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'metareg runs imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "one" in done.stdout and "finished" in done.stdout


# ---------------------------------------------------------------- metareg compare

# 20 episodes. Baseline accuracies alternate 0.2 / 0.8 (a large spread that pairing cancels); the other run
# is 0.2 better on 15 episodes and 0.2 worse on 5. Differences d: mean 0.1; squared deviations
# 15 * 0.1^2 + 5 * 0.3^2 = 0.6, sd = sqrt(0.6 / 19), se = sqrt(0.6 / 380) = 0.0397360; t(0.975, 19) = 2.093024
# -> CI half-width 0.083169; t = 0.1 / se = sqrt(19 / 3) = 2.516611. Wilcoxon: all |d| tie, ranks 10.5,
# W+ = 15 * 10.5 = 157.5, mean 20 * 21 / 4 = 105, variance 20 * 21 * 41 / 24 - (20^3 - 20) / 48 = 551.25,
# z = 52.5 / sqrt(551.25) = sqrt(5), p = erfc(sqrt(5 / 2)) = 0.025347.
BASE = {i: 0.2 if i % 2 else 0.8 for i in range(20)}
BETTER = {i: BASE[i] + (0.2 if i < 15 else -0.2) for i in range(20)}


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(tmp_path / "runs" / "baseline", BASE)
    b = make_run(tmp_path / "runs" / "candidate", BETTER, reverse_rows=True)  # pairing is by episode, not by row
    return a, b


def check_known_comparison(a: Path, b: Path) -> None:
    result = invoke("compare", str(a), str(b), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)["comparisons"][0]
    assert got["episodes"] == 20
    assert abs(got["mean_difference"] - 0.1) < 1e-9
    assert abs(got["ci95"] - 2.093024 * math.sqrt(0.6 / 380)) < 1e-6
    assert abs(got["wilcoxon_p"] - math.erfc(math.sqrt(2.5))) < 1e-9 and got["wilcoxon_method"] == "normal"
    assert 0.020 < got["t_test_p"] < 0.021  # two-sided p of t = 2.5166 with 19 degrees of freedom
    assert got["verdict"].startswith("candidate is better than baseline by 10.00 points")


def test_compare_pairs_episodes_and_matches_the_hand_computation(two_runs):
    a, b = two_runs
    check_known_comparison(a, b)
    text = invoke("compare", str(a), str(b))
    assert text.exit_code == 0
    assert "candidate − baseline: +10.00 ± 8.32 points (95% CI), paired t-test p = 0.021, Wilcoxon p = 0.0253" \
        in text.output
    stats = pytest.importorskip("scipy.stats")
    ids = sorted(BASE)
    expected_t = stats.ttest_rel([BETTER[i] for i in ids], [BASE[i] for i in ids]).pvalue
    assert abs(json.loads(invoke("compare", str(a), str(b), "--json").output)["comparisons"][0]["t_test_p"]
               - expected_t) < 1e-9


def _unpaired(a, b):
    # Welch-style: compares the two means as if the episodes were unrelated.
    xs, ys = list(a.accuracies.values()), list(b.accuracies.values())
    n = len(xs)
    mean = sum(ys) / n - sum(xs) / n
    var = sum((v - sum(xs) / n) ** 2 for v in xs) / (n - 1) / n + sum((v - sum(ys) / n) ** 2 for v in ys) / (n - 1) / n
    d = compare.paired_differences([mean] * n)
    return compare.Paired(n, mean, 2.024 * math.sqrt(var), 0.3, d.wilcoxon_p, d.wilcoxon_method, d.differences)


def _by_row_order(a, b):
    return compare.paired_differences([y - x for x, y in zip(a.accuracies.values(), b.accuracies.values(),
                                                               strict=True)])


@pytest.mark.parametrize("mutant", [_unpaired, _by_row_order])
def test_the_check_catches_a_wrong_statistic(two_runs, monkeypatch, mutant):
    monkeypatch.setattr(compare, "paired", mutant)
    with pytest.raises(AssertionError):
        check_known_comparison(*two_runs)


def test_exact_wilcoxon_for_few_episodes():
    # 6 distinct positive differences: only 1 of the 2^6 sign patterns is as extreme on each side -> p = 2/64.
    assert compare.wilcoxon([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == (2 / 64, "exact")
    # signs + + - with ranks 1 2 3: W+ = 3, P(W+ <= 3) = 4/8 (sums 0, 1, 2, 3), two-sided 1.0
    assert compare.wilcoxon([0.1, 0.2, -0.3]) == (1.0, "exact")
    assert compare.wilcoxon([0.0, 0.0]) == (1.0, "exact")


@pytest.mark.parametrize(("change", "why"), [
    ({"seed": 1}, "seed 0 vs 1"),
    ({"shots": 5}, "shots 1 vs 5"),
    ({"queries": 15}, "queries 5 vs 15"),
    ({"episodes": 19}, "episodes 20 vs 19"),
    ({"dataset_options": {"image_size": 28}}, "dataset_options {'image_size': '14'} vs {'image_size': '28'}"),
])
def test_compare_refuses_runs_tested_on_other_episodes(tmp_path, change, why):
    a = make_run(tmp_path / "a", BASE)
    accs = {i: BETTER[i] for i in range(change.get("episodes", 20))}
    b = make_run(tmp_path / "b", accs, **{k: v for k, v in change.items() if k != "episodes"})
    plot = tmp_path / "diff.png"
    result = invoke("compare", str(a), str(b), "--plot", str(plot))
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and why in result.output and "not tested on the same episodes" \
        in result.output
    assert not plot.exists()


def test_compare_refuses_a_run_without_test_episodes_and_a_plot_inside_a_run(two_runs, tmp_path):
    a, b = two_runs
    broken = make_run(tmp_path / "broken", None, state="failed")
    result = invoke("compare", str(a), str(broken))
    assert result.exit_code == 2 and "has no test_episodes.csv" in result.output
    inside = a / "diff.png"
    result = invoke("compare", str(a), str(b), "--plot", str(inside))
    assert result.exit_code == 2 and "inside the metareg run directory" in result.output
    assert not inside.exists()


def test_compare_writes_the_plot_where_asked_and_nothing_into_the_runs(two_runs, tmp_path):
    a, b = two_runs
    # dataset options as `--dataset-opt image_size=14` records them (text): the same episodes as the int 14
    c = make_run(tmp_path / "runs" / "third", {i: BASE[i] for i in range(20)}, dataset_options={"image_size": "14"})
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}
    plot = tmp_path / "out" / "diff.png"
    result = invoke("compare", str(a), str(b), str(c), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")} == before
    assert "third − baseline: +0.00 ± 0.00 points" in result.output
    assert "no significant difference between baseline and third" in result.output
    assert "divide 0.05 by the number of comparisons" in result.output


# ---------------------------------------------------------------- one real run


def test_a_real_run_records_provenance_and_is_listed(tmp_path):
    from tests.test_run import TINY

    out = tmp_path / "runs" / "tiny"
    result = invoke("run", *TINY, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary["wall_seconds"], float) and summary["wall_seconds"] >= summary["train_seconds"]
    assert summary["device"].startswith(("cpu", "cuda", "mps"))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert set(summary["options"]["dataset"]) == {"image_size", "samples_per_class"}
    assert summary["options"] == {k: config[f"{k}_options"] for k in ("dataset", "backbone", "transform", "strategy")}
    commit = summary["git"]["commit"]  # the test suite runs from a checkout
    known = subprocess.run(["git", "-C", str(Path(compare.__file__).parent), "cat-file", "-t", commit],
                           capture_output=True, text=True)
    assert known.stdout.strip() == "commit" and isinstance(summary["git"]["dirty"], bool)
    row = json.loads(invoke("runs", str(tmp_path / "runs"), "--json").output)["runs"][0]
    assert (row["run"], row["status"], row["steps"], row["episodes"]) == ("tiny", "finished", 8, 12)
    assert row["accuracy"] == summary["accuracy"] and row["wall_seconds"] == summary["wall_seconds"]


def _checked_grid_comparison(tmp_path) -> None:
    import random
    from fractions import Fraction

    rng = random.Random(3)
    # 3-way, 2 queries: accuracies are k / 6, written to the CSV with 6 decimals (1/6 -> 0.166667)
    a = {i: Fraction(rng.randint(0, 6), 6) for i in range(40)}
    b = {i: Fraction(rng.randint(0, 6), 6) for i in range(40)}
    ra = make_run(tmp_path / "a", a, ways=3, queries=2)
    rb = make_run(tmp_path / "b", b, ways=3, queries=2)
    got = json.loads(invoke("compare", str(ra), str(rb), "--json").output)["comparisons"][0]
    exact = compare.wilcoxon([b[i] - a[i] for i in range(40)])  # the exact fractions, ties intact
    assert abs(got["wilcoxon_p"] - exact[0]) < 1e-12


def test_accuracies_are_read_back_onto_their_grid_so_ties_stay_ties(tmp_path, monkeypatch):
    _checked_grid_comparison(tmp_path / "ok")
    monkeypatch.setattr(compare, "_snap", lambda accuracies, settings: accuracies)
    with pytest.raises(AssertionError):
        _checked_grid_comparison(tmp_path / "mutant")
