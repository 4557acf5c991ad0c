"""The evaluation protocol: per-episode accuracy, mean and 95% confidence interval."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from metareg.files import atomic_write


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz).

    Written here rather than taken from scipy, which metareg does not depend on; checked
    against printed t tables and, where scipy is installed, against scipy (tests/test_compare.py).
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean; use symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 2.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def ci95_halfwidth(values) -> float:
    """Half-width of the 95% confidence interval of the mean of ``values``: Student's t with n - 1 degrees of
    freedom times the standard error (z = 1.96 would understate it: by 41% at 5 episodes, 4% at 30)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return t_quantile(0.975, n - 1) * math.sqrt(var / n)


#: Evaluation episode ids of a run with several sources: episode ``j`` of source ``s`` is ``s * SOURCE_STRIDE + j``
#: (episode counts stay below 2**31), so ids stay unique through the gather of every process and the first
#: source's ids are those of a run on that dataset alone.
SOURCE_STRIDE = 2**32


#: ``ways``, ``shots`` and ``queries`` of a report on variable episodes (in summary.json too, so that ``metareg
#: compare`` never pairs them with fixed episodes of the same settings).
VARIABLE = "variable"


@dataclass(frozen=True)
class Report:
    """Accuracy over a set of fixed test episodes; with several sources, ``sources`` holds each one's report
    and the accuracy is the mean over sources."""

    mean: float  # fraction in [0, 1]
    ci95: float  # half-width of the 95% confidence interval, same unit
    episodes: int
    ways: int | str  # VARIABLE for variable episodes
    shots: int | str
    queries: int | str
    sources: tuple[tuple[str, Report], ...] = ()

    def line(self) -> str:
        """What a run prints: one line, and one more per source when there are several."""
        over = f"mean over {len(self.sources)} sources, " if self.sources else ""
        # --episodes variable: ways, shots and queries differ from episode to episode (metareg.variable_episodes).
        shape = "variable-way variable-shot" if self.ways == VARIABLE else f"{self.ways}-way {self.shots}-shot"
        head = (
            f"{shape}: {100 * self.mean:.1f} ± {100 * self.ci95:.1f} % "
            f"(95% CI, {over}{self.episodes} test episodes)"
        )
        return "\n".join([head, *(f"  {name}: {100 * r.mean:.1f} ± {100 * r.ci95:.1f} % "
                                    f"(95% CI, {r.episodes} test episodes)" for name, r in self.sources)])

    def as_dict(self) -> dict:
        out = {
            "accuracy": self.mean,
            "ci95": self.ci95,
            "episodes": self.episodes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
        }
        if self.sources:
            out["sources"] = {name: {k: r.as_dict()[k] for k in ("accuracy", "ci95", "episodes")}
                              for name, r in self.sources}
        return out


def summarise(accuracies, ways: int, shots: int, queries: int) -> Report:
    """Mean and 95% CI (Student's t, sample standard deviation) of per-episode accuracies.

    ``accuracies`` may also be a mapping ``{source: accuracies}`` of a run with several sources: each
    source is summarised alone, and the run's accuracy is the mean over sources (each source counts the
    same, however many classes it has) with the interval of a stratified mean, ``sqrt(sum ci_s**2) / S``
    (the sources' episodes are drawn independently).
    """
    if isinstance(accuracies, Mapping):
        if len(accuracies) == 1:
            (accuracies,) = accuracies.values()
        else:
            parts = tuple((name, summarise(values, ways, shots, queries)) for name, values in accuracies.items())
            if not parts:
                raise ValueError("no episodes to summarise")
            k = len(parts)
            mean = sum(r.mean for _, r in parts) / k
            ci = math.sqrt(sum(r.ci95 ** 2 for _, r in parts)) / k
            return Report(mean, ci, sum(r.episodes for _, r in parts), ways, shots, queries, parts)
    values = [float(a) for a in accuracies]
    n = len(values)
    if n == 0:
        raise ValueError("no episodes to summarise")
    return Report(sum(values) / n, ci95_halfwidth(values), n, ways, shots, queries)


def locate(episode_id: int, sources: Sequence[str]) -> tuple[str, int]:
    """``(source, episode)`` of an evaluation episode id of a run with ``sources`` (see SOURCE_STRIDE)."""
    s, j = divmod(int(episode_id), SOURCE_STRIDE)
    return sources[s], j


def episode_table(episode_ids, accuracies, sources: Sequence[str] = ()) -> dict:
    """Per-episode accuracies keyed as ``test_episodes.csv`` keys them: the episode number, or
    ``(source, episode)`` in a run with several ``sources``."""
    pairs = zip(episode_ids, accuracies, strict=True)
    if not sources:
        return {int(i): float(a) for i, a in pairs}
    return {locate(i, sources): float(a) for i, a in pairs}


def by_source(table: Mapping) -> dict[str, list[float]] | list[float]:
    """A table from :func:`episode_table` or :func:`read_episodes` as :func:`summarise` takes it: the
    accuracies in episode order, grouped by source (in their order of appearance) when keyed by source."""
    if not any(isinstance(k, tuple) for k in table):
        return [table[k] for k in sorted(table)]
    groups: dict[str, list[tuple[int, float]]] = {}
    for (source, j), a in table.items():
        groups.setdefault(source, []).append((j, a))
    return {source: [a for _, a in sorted(rows)] for source, rows in groups.items()}


def write_episodes(path: Path, episode_ids, accuracies, sources: Sequence[str] = ()) -> None:
    """One row per test episode, so two runs can be compared episode by episode; with several
    ``sources``, a first column names each episode's source and episodes count from 0 in each."""
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["source", "episode", "accuracy"] if sources else ["episode", "accuracy"])
    for i, a in zip(episode_ids, accuracies, strict=True):
        w.writerow([*locate(i, sources), f"{float(a):.6f}"] if sources else [int(i), f"{float(a):.6f}"])
    atomic_write(path, buffer.getvalue())


def read_episodes(path: Path) -> dict:
    """``test_episodes.csv`` as :func:`episode_table` keys it."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if "source" in (rows.fieldnames or ()):
            return {(r["source"], int(r["episode"])): float(r["accuracy"]) for r in rows}
        return {int(r["episode"]): float(r["accuracy"]) for r in rows}
