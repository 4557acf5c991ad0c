"""Paired, interleaved timing: the one way every benchmark here compares two loops.

On a shared host the speed of a loop swings by up to 10x within a minute (other processes,
the hypervisor's steal): two loops timed one after the other, each for some seconds, can
read 0.2x or 7.7x for the same code. Here both loops live in one process, are warmed, and
then take single turns, A, B, A, B, ..., each turn timed alone; every pair of neighbouring
turns saw nearly the same machine, so the ratio of their rates holds even while the machine
changes. What is reported is the median of the per-pair ratios with a bootstrap 95 %
interval of that median, and each loop's own rate beside it (which does move with the load).

A turn may repeat the faster loop a few times (``balance``) so that both turns of a pair
last about as long: a pair of a 3 s turn and a 0.1 s turn would not see the same machine.

    result = paired(Side("metareg", step_a, units=32), Side("learn2learn", step_b, units=1),
                    pairs=20, seconds=60)
    print(result.summary("ProtoNet episodes/s", "metareg", "learn2learn"))
"""
from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Side:
    """One loop: ``step()`` does ``units`` of work (episodes, steps, images) per call."""

    name: str
    step: Callable[[], object]
    units: float = 1.0
    repeat: int = 1  # calls per turn; set by paired(balance=True)


@dataclass
class Paired:
    """Per-pair ratios of rate(A) / rate(B) and each side's rates (units per second), turn by turn."""

    a: str
    b: str
    ratios: list[float]
    rates_a: list[float]
    rates_b: list[float]
    repeats: tuple[int, int] = (1, 1)
    ci: tuple[float, float] = field(default=(math.nan, math.nan))

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def rate_a(self) -> float:
        return statistics.median(self.rates_a)

    @property
    def rate_b(self) -> float:
        return statistics.median(self.rates_b)

    def summary(self, what: str, unit: str = "") -> str:
        """``WHAT: A / B = N.NNx [95% CI L.LL-H.HHx] (A R/s, B R/s; P pairs)``: the line scripts parse."""
        lo, hi = self.ci
        unit = f" {unit}" if unit else ""
        return (f"{what}: {self.a} / {self.b} = {self.ratio:.2f}x [95% CI {lo:.2f}-{hi:.2f}x] "
                f"({self.a} {_fmt(self.rate_a)}{unit}, {self.b} {_fmt(self.rate_b)}{unit}; "
                f"{len(self.ratios)} pairs)")

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "ratio": round(self.ratio, 4), "ci95": [round(x, 4) for x in self.ci],
                "rate_a": round(self.rate_a, 4), "rate_b": round(self.rate_b, 4), "pairs": len(self.ratios),
                "repeats": list(self.repeats)}


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def bootstrap_median_ci(values: list[float], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (a fixed seed: the same data gives the same interval)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * (resamples - 1))], medians[math.ceil((1 - tail) * (resamples - 1))]


def _turn(side: Side, sync: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(side.repeat):
        side.step()
    sync()
    return time.perf_counter() - start


def paired(a: Side, b: Side, *, pairs: int = 20, seconds: float | None = None, min_pairs: int = 5,
           warmup: int = 1, balance: bool = True, max_repeat: int = 1000,
           sync: Callable[[], object] = lambda: None) -> Paired:
    """Time ``a`` against ``b`` in alternating turns; stop after ``pairs`` pairs or, when ``seconds``
    is given, once that much time has passed and at least ``min_pairs`` pairs are in.

    warmup: untimed calls of each side first (allocator, caches, lazy initialisation, compilation).
    balance: after warm-up, one timed call of each sets how often the faster side repeats per
        turn (at most ``max_repeat``), so that the two turns of a pair last about as long.
    sync: waits for queued device work (``torch.cuda.synchronize``) before a turn's clock stops.
    """
    for side in (a, b):
        for _ in range(warmup):
            side.step()
        sync()
    if balance:  # the median of three single calls each (one for a short run): one call can land on a busy moment
        calls = 3 if pairs >= 5 else 1
        ta = statistics.median(_turn(Side(a.name, a.step), sync) for _ in range(calls))
        tb = statistics.median(_turn(Side(b.name, b.step), sync) for _ in range(calls))
        if ta < tb:
            a.repeat = max(1, min(max_repeat, round(tb / max(ta, 1e-9))))
        else:
            b.repeat = max(1, min(max_repeat, round(ta / max(tb, 1e-9))))
    ratios, rates_a, rates_b = [], [], []
    start = time.perf_counter()
    for i in range(pairs if seconds is None else 10**9):
        if seconds is not None and i >= min_pairs and (time.perf_counter() - start >= seconds or i >= pairs):
            break
        ta = _turn(a, sync)
        tb = _turn(b, sync)
        rate_a, rate_b = a.units * a.repeat / ta, b.units * b.repeat / tb
        rates_a.append(rate_a)
        rates_b.append(rate_b)
        ratios.append(rate_a / rate_b)
    result = Paired(a.name, b.name, ratios, rates_a, rates_b, (a.repeat, b.repeat))
    result.ci = bootstrap_median_ci(ratios)
    return result
