"""The benchmarks' machinery: paired timing (bench/paired.py) and the GPU check's CPU dry run.

No timed assertions: the paired arithmetic runs on a fake clock, and the dry run is checked for
the presence and form of its lines, never for their values.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
# learn2learn's own loops, timed beside metareg's (bench/bench_strategies.py reads the same path).
REFERENCE = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared")) / "bench" / "learn2learn_reference.py"

import gpu_check_lines  # noqa: E402
import paired  # noqa: E402


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_paired_ratio_is_the_median_of_pairs_on_a_fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(paired.time, "perf_counter", clock)
    costs = iter([1.0] * 4 + ([1.0] * 9 + [50.0]) * 10)  # A's calls; a 50 s hiccup in every 10th

    def a():
        clock.now += next(costs)

    def b():
        clock.now += 3.0  # three times A's time for the same work

    result = paired.paired(paired.Side("A", a, units=2), paired.Side("B", b, units=2), pairs=9, warmup=1)
    # balance: A repeats 3 times per turn so both turns last as long
    assert result.repeats == (3, 1)
    assert len(result.ratios) == 9
    assert result.ratio == pytest.approx(3.0)  # the hiccups move single pairs, not the median
    assert result.rate_b == pytest.approx(2 / 3.0)
    lo, hi = result.ci
    assert lo <= result.ratio <= hi
    line = result.summary("Loop units/s", "units/s")
    assert line.startswith("Loop units/s: A / B = 3.00x [95% CI ")
    assert gpu_check_lines.RATIO.search(line)


def test_bootstrap_interval_is_seeded_and_widens_with_spread():
    tight = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    wide = [0.2, 1.0, 5.0, 0.5, 3.0, 1.0, 8.0]
    assert paired.bootstrap_median_ci(tight) == paired.bootstrap_median_ci(tight)
    (tl, th), (wl, wh) = paired.bootstrap_median_ci(tight), paired.bootstrap_median_ci(wide)
    assert th - tl < 0.05 < wh - wl


@pytest.fixture(scope="module")
def dry_run():
    if not REFERENCE.is_file():
        pytest.skip(f"learn2learn's reference loops not found at {REFERENCE} "
                    "(set METAREG_SHARED to the shared/ folder)")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHON": sys.executable})
    return proc


def test_gpu_check_dry_run_prints_every_figure(dry_run):
    assert dry_run.returncode == 0, dry_run.stdout[-3000:] + dry_run.stderr[-3000:]
    assert "gpu_check: all figures present" in dry_run.stdout
    assert gpu_check_lines.problems(dry_run.stdout, "cpu", [1]) == []
    maml = next(line for line in dry_run.stdout.splitlines()
                if line.startswith("MAML steps/s (1 per step): metareg / learn2learn = "))
    ratio, lo, hi = (float(x) for x in gpu_check_lines.RATIO.search(maml).groups()[:3])
    assert ratio > 0 and 0 < lo <= hi


def test_gpu_check_fails_when_a_figure_is_missing_or_broken(dry_run, tmp_path):
    lines = dry_run.stdout.splitlines()
    missing = "\n".join(ln for ln in lines if not ln.startswith("MAML steps/s (1 per step): metareg / learn2learn"))
    assert gpu_check_lines.problems(missing, "cpu", [1]) == [
        "missing: MAML steps/s (1 per step): metareg / learn2learn ..."]
    broken = "\n".join(ln.replace(" = ", " = nan", 1) if ln.startswith("Evaluation episodes/s") else ln
                       for ln in lines)
    assert [p.split(":")[0] for p in gpu_check_lines.problems(broken, "cpu", [1])] == ["unreadable"]
    no_accuracy = "\n".join(ln for ln in lines if " 20w5s: " not in ln)
    assert gpu_check_lines.problems(no_accuracy, "cpu", [1]) == ["missing: Omniglot ProtoNet ... 20w5s: ..."]
    log = tmp_path / "log"
    log.write_text(missing)
    check = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check_lines.py"), str(log), "--device", "cpu",
                            "--tasks", "1"], capture_output=True, text=True)
    assert check.returncode == 1 and "1 figure(s) missing" in check.stdout
    # on a GPU the speed lines must carry the peak memory too
    assert any(p.startswith("no peak GPU memory") for p in gpu_check_lines.problems(dry_run.stdout, "cuda", [1]))


def test_gpu_check_refuses_bad_usage():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "tpu"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "Error: --device must be cuda or cpu, got 'tpu'"


# Every benchmark's quick mode runs here, so none can rot unnoticed (bench_rundir had: it read a batch
# as a dict after the datamodule began shipping SampledEpisodes). Checked: exit 0 and the form of
# the lines each prints (a paired ratio that parses), never the values.
QUICK = {
    "bench_backbones.py": (["--backbones", "conv4", "--batch", "2", "--pairs", "2", "--settings", "bf16 channels-last"],
                           ["Backbone conv4 3x84x84 images/s: bf16 channels-last / fp32 = ",
                            "Backbone conv4 1x28x28 images/s: bf16 channels-last / fp32 = "]),
    "bench_rundir.py": (["--quick", "--reps", "2", "--steps", "1", "--claims", "2"],
                        ["Training steps/s: with checks / without = ", "Run directories/s: claim / mkdir = "]),
    "bench_prototype_search.py": (["--classes", "300", "--queries", "8", "--repeats", "1", "--pairs", "2",
                                   "--methods", "full", "exact"],
                                  ["Prototype search queries/s, 300 classes: exact / full = "]),
    "bench_serve.py": (["--clients", "1", "--requests", "2", "--pairs", "2", "--hidden", "8"],
                       ["Serve images/s, 1 client: HTTP / in-process predict = "]),
    "bench_accuracy.py": (["--datasets", "glyphs", "--quick", "--steps", "1", "--test-num-tasks", "2"], []),
    "bench_open_set.py": (["--quick", "--steps", "1", "--episodes", "2", "--ways", "2", "--shots", "1",
                           "--queries", "1"], []),
    # the step-level evaluation line runs in gpu_check.sh's dry run; this is `metareg eval` whole
    "bench_evaluation.py": (["--end-to-end", "--synthetic", "--tasks", "2", "--ways", "5", "--queries", "2",
                             "--pairs", "2", "--hidden", "8", "--eval-meta-batch-size", "1"],
                            ["Evaluation end to end episodes/s: metareg eval / forward = "]),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_benchmark_quick_mode_runs_and_prints_its_lines(script, tmp_path):
    if script == "bench_serve.py":
        pytest.importorskip("httpx")
        pytest.importorskip("fastapi")
    args, prefixes = QUICK[script]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for prefix in prefixes:
        line = next((ln for ln in lines if ln.startswith(prefix)), None)
        assert line is not None, f"missing {prefix!r} in:\n{proc.stdout[-3000:]}"
        ratio, lo, hi = (float(x) for x in gpu_check_lines.RATIO.search(line).groups()[:3])
        assert ratio > 0 and 0 < lo <= hi
    if script == "bench_accuracy.py":
        assert any(ln.startswith("glyphs     prototypicalnetworks   5w1s") for ln in lines), proc.stdout[-3000:]
    if script == "bench_open_set.py":
        assert any(ln.startswith("max_logit*") for ln in lines) and any(ln.startswith("max_probability")
                                                                        for ln in lines), proc.stdout[-3000:]


def test_every_benchmark_has_a_quick_mode_test():
    """A bench_*.py that no test runs fails here: covered are QUICK's, those gpu_check.sh's dry run runs, and
    those another test file names (a benchmark with its own test elsewhere)."""
    dry_run = (ROOT / "bench" / "gpu_check.sh").read_text()
    others = [f.read_text() for f in [*(ROOT / "tests").glob("test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
              if f.name != Path(__file__).name]
    scripts = {p.name for p in (ROOT / "bench").glob("bench_*.py")}
    untested = {s for s in scripts - set(QUICK) if f"bench/{s}" not in dry_run and not any(s in o for o in others)}
    assert untested == set(), f"benchmarks no test runs: {sorted(untested)}; add their quick mode to QUICK"
    assert {"bench_strategies.py", "bench_evaluation.py"} <= {s for s in scripts if f"bench/{s}" in dry_run}
