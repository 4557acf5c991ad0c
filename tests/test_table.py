"""`metareg table` over run directories written by hand: the statistics, the three formats, the refusals."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metareg import compare
from metareg.cli import cli
from metareg.evaluation import ci95_halfwidth, summarise, t_quantile

EPISODES = 10


def make_run(path: Path, strategy: str, seed: int, accuracies: list[float], *, ways: int = 5, shots: int = 1,
             queries: int = 5, lr: float = 0.001, kind: str = "run", temperature=None,
             recorded: dict | None = None) -> Path:
    """A finished run as metareg leaves it (no training): marker, config.yaml, test_episodes.csv, summary.json."""
    path.mkdir(parents=True)
    (path / ".metareg-run").write_text(json.dumps({"kind": kind, "metareg_version": "0.1.0"}) + "\n")
    options = {} if temperature is None else {"temperature": temperature}
    config = {"dataset": "glyphs", "dataset_options": {"image_size": 14}, "backbone": "conv4", "transform": "none",
              "strategy": strategy, "strategy_options": options, "ways": 5, "shots": 1, "queries": 5,
              "test_ways": ways, "test_shots": shots, "test_queries": queries, "test_num_tasks": len(accuracies),
              "seed": seed, "lr": lr, "output_dir": str(path)}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / "test_episodes.csv").write_text("episode,accuracy\n" + "".join(
        f"{i},{a:.6f}\n" for i, a in enumerate(accuracies)))
    report = summarise(accuracies, ways, shots, queries)
    summary = {**report.as_dict(), "seed": seed, "strategy": strategy}
    if recorded is not None:  # what summary.json records since issue 19: every option, defaults included
        summary["components"] = {"strategy": {"name": strategy, "options": recorded}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def accuracies(level: int, seed: int) -> list[float]:
    # k/5 fractions (5 ways x 5 queries gives k/25; these stay on that grid), different per seed and method.
    return [min(1.0, (level + (i * (seed + 3)) % 7) / 25) for i in range(EPISODES)]


@pytest.fixture
def runs(tmp_path) -> Path:
    for seed in (0, 1, 2):
        make_run(tmp_path / f"proto-{seed}", "protonet", seed, accuracies(14, seed))  # an alias, as a user types it
        make_run(tmp_path / f"maml-{seed}", "maml", seed, accuracies(12, seed))
    return tmp_path


def table(*args):
    return CliRunner().invoke(cli, ["table", *map(str, args)])


def test_rows_give_the_mean_over_seeds_both_intervals_and_the_paired_test(runs):
    result = table(runs, "--by", "strategy", "--baseline", "prototypicalnetworks", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO(result.output))}
    assert list(rows) == ["maml", "prototypicalnetworks"]  # the alias typed is shown as the name it stands for
    for name, level in (("prototypicalnetworks", 14), ("maml", 12)):
        per_seed = [accuracies(level, s) for s in (0, 1, 2)]
        means = [sum(a) / EPISODES for a in per_seed]
        mean = sum(means) / 3
        sd = math.sqrt(sum((m - mean) ** 2 for m in means) / 2)
        assert float(rows[name]["accuracy_pct"]) == pytest.approx(100 * mean, abs=1e-4)
        assert float(rows[name]["ci95_seeds_pct"]) == pytest.approx(100 * t_quantile(0.975, 2) * sd / math.sqrt(3),
                                                                     abs=1e-4)
        episodes_ci = sum(ci95_halfwidth(a) for a in per_seed) / 3
        assert float(rows[name]["ci95_episodes_mean_of_runs_pct"]) == pytest.approx(100 * episodes_ci, abs=1e-4)
        assert rows[name]["seeds"] == "0 1 2" and rows[name]["episodes_per_run"] == str(EPISODES)
    # Every seed's episodes paired and pooled: 30 differences of 2/25, so the mean is exact and the t-test decisive.
    maml = rows["maml"]
    assert float(maml["paired_diff_pct"]) == pytest.approx(-8.0, abs=1e-4) and maml["paired_episodes"] == "30"
    expected = compare.paired_differences([(a - b) for s in (0, 1, 2)
                                           for a, b in zip(accuracies(12, s), accuracies(14, s), strict=True)])
    assert float(maml["paired_t_test_p"]) == pytest.approx(expected.t_p, rel=1e-5)
    assert rows["prototypicalnetworks"]["paired_diff_pct"] == ""  # the baseline itself


def test_markdown_and_latex_say_which_interval_is_which(runs):
    md = table(runs, "--by", "strategy", "--protocol", "5w1s", "--baseline", "maml")
    assert md.exit_code == 0, md.output
    lines = md.output.splitlines()
    assert "Student's t" in md.output and "mean of the runs' own 95% CIs" in md.output and "paired" in md.output
    header = next(i for i, line in enumerate(lines) if line.startswith("| strategy"))
    assert lines[header] == ("| strategy | seeds | accuracy | ± seeds | ± episodes | Δ vs maml | p (t-test) | "
                             "p (Wilcoxon) |")
    body = lines[header + 2:]
    assert len(body) == 2 and body[0].startswith("| maml | 3 | ") and "| baseline |" in body[0]
    assert body[1].startswith("| prototypicalnetworks | 3 | ") and "| +8.00 ± " in body[1]
    tex = table(runs, "--by", "strategy", "--format", "latex")
    assert tex.exit_code == 0, tex.output
    assert r"\toprule" in tex.output and r"strategy & seeds & accuracy & $\pm$ seeds & $\pm$ episodes \\" in tex.output
    assert tex.output.count(r" \\") == 3 and "% ± seeds: 95% CI" in tex.output


def test_rows_by_an_option_and_an_evaluation_at_another_protocol(tmp_path):
    for seed in (0, 1):
        for temp in (1, 10):
            run = make_run(tmp_path / f"t{temp}-{seed}", "prototypicalnetworks", seed, accuracies(10 + temp // 5, seed),
                           temperature=temp)
            make_run(run / "eval-5w5s", "prototypicalnetworks", seed, accuracies(20 + temp // 5, seed), shots=5,
                     kind="eval", temperature=temp)
    result = table(tmp_path, "--by", "strategy_options.temperature", "--protocol", "5w5s", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["strategy_options.temperature"], r["shots"]) for r in rows] == [("1", "5"), ("10", "5")]
    assert float(rows[1]["accuracy_pct"]) > float(rows[0]["accuracy_pct"]) > 80
    mixed = table(tmp_path, "--by", "strategy")
    assert mixed.exit_code == 2 and "differ in strategy_options.temperature" in mixed.output


@pytest.mark.parametrize("recorded", [True, False])
def test_an_option_left_at_its_default_and_the_same_value_typed_are_one_method(tmp_path, recorded):
    options = {"distance": "euclidean", "temperature": 1.0} if recorded else None
    make_run(tmp_path / "a", "prototypicalnetworks", 0, accuracies(14, 0), recorded=options)
    make_run(tmp_path / "b", "prototypicalnetworks", 1, accuracies(14, 1), temperature="1", recorded=options)
    result = table(tmp_path, "--by", "strategy")
    if recorded:
        assert result.exit_code == 0 and "| prototypicalnetworks | 2 |" in result.output, result.output
    else:  # older summaries without the options: the config's values, which differ, are all there is to go on
        assert result.exit_code == 2 and "differ in strategy_options.temperature" in result.output


@pytest.mark.parametrize(("broken", "message"), [
    ("other_episodes", "were not tested on the same episodes (episodes 8 vs 10"),
    ("same_seed_twice", "has two runs with seed 0"),
    ("other_lr", "mixes runs that differ in lr"),
    ("missing_seed", "have different seeds"),
    ("other_protocol", "choose one with --protocol"),
])
def test_runs_that_cannot_share_a_table_are_refused_with_one_line(runs, broken, message):
    if broken == "other_episodes":
        shutil.rmtree(runs / "maml-0")
        make_run(runs / "maml-0", "maml", 0, accuracies(12, 0)[:8])
    elif broken == "same_seed_twice":
        make_run(runs / "maml-0-again", "maml", 0, accuracies(12, 0))
    elif broken == "other_lr":
        make_run(runs / "maml-3", "maml", 3, accuracies(12, 3), lr=0.01)
    elif broken == "missing_seed":
        make_run(runs / "maml-3", "maml", 3, accuracies(12, 3))
    elif broken == "other_protocol":
        make_run(runs / "maml-3", "maml", 3, accuracies(12, 3), shots=5)
    result = table(runs, "--by", "strategy", "--baseline", "prototypicalnetworks")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--by", "seed"], "--by 'seed'"),
    (["--by", "strategy_opts.x"], "--by 'strategy_opts.x'"),
    (["--protocol", "five-way"], "write ways and shots as 5w1s"),
    (["--protocol", "20w1s"], "no run was tested at 20w1s"),
    (["--baseline", "protonet"], "--baseline 'protonet' names no row"),
])
def test_bad_table_options_are_refused(runs, args, message):
    result = table(runs, *args)
    assert result.exit_code == 2 and message in result.output, result.output
