"""The evaluation protocol: per-episode accuracy, mean and 95% confidence interval."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from metareg.files import atomic_write

# Two-sided 95% quantile of the normal distribution; with >= 100 episodes the
# Student-t quantile differs from it in the third decimal.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Report:
    """Accuracy over a set of fixed test episodes."""

    mean: float  # fraction in [0, 1]
    ci95: float  # half-width of the 95% confidence interval, same unit
    episodes: int
    ways: int
    shots: int
    queries: int

    def line(self) -> str:
        return (
            f"{self.ways}-way {self.shots}-shot: {100 * self.mean:.1f} ± {100 * self.ci95:.1f} % "
            f"(95% CI, {self.episodes} test episodes)"
        )

    def as_dict(self) -> dict:
        return {
            "accuracy": self.mean,
            "ci95": self.ci95,
            "episodes": self.episodes,
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
        }


def summarise(accuracies, ways: int, shots: int, queries: int) -> Report:
    """Mean and 95% CI (normal approximation, sample standard deviation) of per-episode accuracies."""
    values = [float(a) for a in accuracies]
    n = len(values)
    if n == 0:
        raise ValueError("no episodes to summarise")
    mean = sum(values) / n
    if n == 1:
        return Report(mean, float("nan"), 1, ways, shots, queries)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Report(mean, Z95 * math.sqrt(var / n), n, ways, shots, queries)


def write_episodes(path: Path, episode_ids, accuracies) -> None:
    """One row per test episode, so two runs can be compared episode by episode."""
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["episode", "accuracy"])
    for i, a in zip(episode_ids, accuracies, strict=True):
        w.writerow([int(i), f"{float(a):.6f}"])
    atomic_write(path, buffer.getvalue())


def read_episodes(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["episode"]): float(r["accuracy"]) for r in csv.DictReader(f)}
