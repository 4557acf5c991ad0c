"""Paired comparison of runs tested on the same fixed test episodes (``metareg compare``).

Test episodes are a pure function of (seed, dataset, ways, shots, queries, episode index),
so two runs with the same test settings saw exactly the same episodes: their per-episode
accuracies pair up, and the paired difference is far more sensitive than comparing two
means with their separate intervals (the episode-to-episode spread, most of the variance,
cancels). Runs whose episodes differ cannot be paired and are refused, saying why.

No torch here, and no scipy (not a dependency): the t distribution comes from
``metareg.evaluation``; the Wilcoxon signed-rank test is exact below 20 non-zero
differences and the normal approximation with tie correction from there on.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from metareg.errors import ConfigError
from metareg.evaluation import read_episodes, t_cdf, t_quantile
from metareg.rundir import MARKER

# What decides which test episodes a run drew (see metareg.episodes / datamodule).
EPISODE_SETTINGS = ("dataset", "dataset_options", "seed", "ways", "shots", "queries", "episodes")
EXACT_WILCOXON_BELOW = 20


@dataclass(frozen=True)
class TestedRun:
    """A run (or `metareg eval` result) as far as its test episodes go."""

    path: Path
    settings: dict
    accuracies: dict[int, float]  # episode index -> accuracy

    @property
    def name(self) -> str:
        return self.path.name


def load(path: str | Path) -> TestedRun:
    import json

    import yaml

    path = Path(path)
    episodes = path / "test_episodes.csv"
    if not episodes.is_file():
        what = ("is not a directory" if not path.is_dir()
                else "has no test_episodes.csv (the run did not finish testing)")
        raise ConfigError(f"cannot compare {str(path)!r}: it {what}; name run directories listed by `metareg runs`")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    try:
        accuracies = read_episodes(episodes)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot compare {str(path)!r}: its test_episodes.csv is unreadable ({exc})") from None
    if not config and not summary:
        raise ConfigError(f"cannot compare {str(path)!r}: it has neither config.yaml nor summary.json, so which test "
                          "episodes it used is unknown")

    def first(*values):
        return next((v for v in values if v is not None), None)

    settings = {
        "dataset": first(config.get("dataset"), summary.get("dataset")),
        # As text: `--dataset-opt image_size=14` records '14', a config file 14; both draw the same episodes.
        "dataset_options": {str(k): str(v) for k, v in (config.get("dataset_options") or {}).items()},
        "seed": first(config.get("seed"), summary.get("seed")),
        "ways": first(config.get("test_ways"), summary.get("ways"), config.get("ways")),
        "shots": first(config.get("test_shots"), summary.get("shots"), config.get("shots")),
        "queries": first(config.get("test_queries"), summary.get("queries"), config.get("queries")),
        "episodes": first(config.get("test_num_tasks"), summary.get("episodes")),
    }
    return TestedRun(path, settings, _snap(accuracies, settings))


def _snap(accuracies: dict[int, float], settings: dict) -> dict[int, float]:
    """Accuracies back onto their grid of k / (ways * queries), undoing the CSV's 6-decimal rounding.

    Otherwise 0.833333 - 0.666667 and 0.166667 - 0 differ in the sixth decimal and the signed-rank
    test would rank as different what are equal differences (ties)."""
    try:
        grid = int(settings["ways"]) * int(settings["queries"])
    except (TypeError, ValueError):
        return accuracies
    if grid <= 0 or any(abs(a * grid - round(a * grid)) > 1e-4 for a in accuracies.values()):
        return accuracies  # not a fraction of the queries (a strategy that weighs them): keep as written
    return {i: round(a * grid) / grid for i, a in accuracies.items()}


def check_same_episodes(a: TestedRun, b: TestedRun) -> None:
    """Refuse two runs that were not tested on the same episodes, naming what differs."""
    differ = [f"{k} {a.settings[k]!r} vs {b.settings[k]!r}" for k in EPISODE_SETTINGS if a.settings[k] != b.settings[k]]
    if not differ and set(a.accuracies) != set(b.accuracies):
        differ.append(f"episode indices ({len(a.accuracies)} vs {len(b.accuracies)} episodes recorded)")
    if differ:
        raise ConfigError(
            f"{a.name!r} and {b.name!r} were not tested on the same episodes ({'; '.join(differ)}), so their "
            f"accuracies cannot be paired; test one again with the other's settings (`metareg eval "
            f"RUN/checkpoints/last.ckpt --seed ... --test-ways ...`) and compare that"
        )


@dataclass(frozen=True)
class Paired:
    """Statistics of ``b - a`` over paired episodes (accuracies as fractions)."""

    n: int
    mean: float
    ci95: float
    t_p: float
    wilcoxon_p: float
    wilcoxon_method: str  # "exact" or "normal"
    differences: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"episodes": self.n, "mean_difference": self.mean, "ci95": self.ci95, "t_test_p": self.t_p,
                "wilcoxon_p": self.wilcoxon_p, "wilcoxon_method": self.wilcoxon_method}


def paired(a: TestedRun, b: TestedRun) -> Paired:
    ids = sorted(a.accuracies)
    d = [b.accuracies[i] - a.accuracies[i] for i in ids]
    return paired_differences(d)


def paired_differences(d: list[float]) -> Paired:
    # Per-episode accuracies are k/queries fractions written with 6 decimals: round away float noise so
    # that equal accuracies give exact zeros and ties (both matter to the signed-rank test).
    d = [round(x, 9) for x in d]
    n = len(d)
    if n < 2:
        raise ConfigError(f"a paired comparison needs at least 2 test episodes, these runs have {n}")
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    if se > 0:
        t_p = 2.0 * t_cdf(-abs(mean) / se, n - 1)
        ci = t_quantile(0.975, n - 1) * se
    else:  # every episode differs by the same amount
        t_p, ci = (1.0 if mean == 0 else 0.0), 0.0
    w_p, method = wilcoxon(d)
    return Paired(n, mean, ci, min(1.0, t_p), w_p, method, tuple(d))


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def wilcoxon(d: list[float]) -> tuple[float, str]:
    """Two-sided p-value of the Wilcoxon signed-rank test (zero differences dropped, Wilcoxon's way)."""
    nonzero = [x for x in d if x != 0]
    m = len(nonzero)
    if m == 0:
        return 1.0, "exact"
    ranks = _ranks([abs(x) for x in nonzero])
    w_plus = sum(r for r, x in zip(ranks, nonzero, strict=True) if x > 0)
    if m < EXACT_WILCOXON_BELOW:
        # Every sign pattern is equally likely under the null: count them over the (doubled, so integer) ranks.
        doubled = [round(2 * r) for r in ranks]
        counts = [1] + [0] * sum(doubled)
        for r in doubled:
            for s in range(len(counts) - 1, r - 1, -1):
                counts[s] += counts[s - r]
        w = round(2 * w_plus)
        total = 2 ** m
        low, high = sum(counts[: w + 1]) / total, sum(counts[w:]) / total
        return min(1.0, 2.0 * min(low, high)), "exact"
    mean = m * (m + 1) / 4.0
    ties = sum(t ** 3 - t for t in Counter(ranks).values())
    var = m * (m + 1) * (2 * m + 1) / 24.0 - ties / 48.0
    if var <= 0:
        return 1.0, "normal"
    z = (w_plus - mean) / math.sqrt(var)
    return math.erfc(abs(z) / math.sqrt(2.0)), "normal"


def verdict(a: str, b: str, p: Paired, alpha: float = 0.05) -> str:
    lo, hi = 100 * (p.mean - p.ci95), 100 * (p.mean + p.ci95)
    stats = (f"95% CI {lo:+.2f} to {hi:+.2f} points; paired t-test p = {p.t_p:.3g}, "
             f"Wilcoxon p = {p.wilcoxon_p:.3g}; {p.n} episodes")
    if p.t_p < alpha:
        better, worse = (b, a) if p.mean > 0 else (a, b)
        line = f"{better} is better than {worse} by {100 * abs(p.mean):.2f} points ({stats})"
    else:
        line = f"no significant difference between {a} and {b} at the {100 * alpha:g}% level ({stats})"
    if (p.t_p < alpha) != (p.wilcoxon_p < alpha):
        line += "; the two tests disagree: treat it as borderline"
    return line


def check_plot_path(path: str | Path, runs: list[TestedRun]) -> Path:
    """Refuse a plot path inside a run directory (metareg writes its own files there, nobody else's)."""
    target = Path(path).resolve()
    for parent in target.parents:
        if (parent / MARKER).is_file():
            raise ConfigError(f"--plot {str(path)!r} is inside the metareg run directory {str(parent)!r}; "
                              "write the plot somewhere outside run directories")
    return target


def plot(path: Path, baseline: str, results: list[tuple[str, Paired]]) -> None:
    """Histogram of each run's per-episode differences from the baseline, with the mean and its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metareg.files import atomic_output

    fig, axes = plt.subplots(len(results), 1, figsize=(7, 2.6 * len(results)), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], results, strict=True):
        values = [100 * x for x in p.differences]
        counts = Counter(values)
        if len(counts) <= 40:  # accuracies are k / queries: a bar per value, not bins that split them unevenly
            ordered = sorted(counts)
            steps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
            ax.bar(list(counts), list(counts.values()), width=0.8 * min(steps, default=1.0), color="tab:blue",
                   alpha=0.7)
        else:
            ax.hist(values, bins=40, color="tab:blue", alpha=0.7)
        ax.axvline(0, color="black", linewidth=1)
        ax.axvline(100 * p.mean, color="tab:red", label=f"mean {100 * p.mean:+.2f}")
        ax.axvspan(100 * (p.mean - p.ci95), 100 * (p.mean + p.ci95), color="tab:red", alpha=0.15, label="95% CI")
        ax.set_xlabel(f"{name} − {baseline}: accuracy difference per test episode (points)")
        ax.set_ylabel("episodes")
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
