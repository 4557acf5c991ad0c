"""`metareg runs` (what is under runs/) and `metareg compare` (are two runs really different?).

Both read the files a run leaves behind and never import torch: listing a hundred runs
takes as long as reading their summaries.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import click

from metareg.errors import ConfigError
from metareg.rundir import MARKER, holder, is_held, read_marker

STATUSES = ("running", "finished", "interrupted", "failed")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _steps(path: Path) -> int | None:
    # Lightning logs `step` as the optimizer steps taken before the logged one, so the last step + 1 is the count.
    try:
        with open(path / "metrics.csv", newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]
    except (OSError, ValueError, KeyError):
        return None
    return max(steps) + 1 if steps else None


def status(path: Path) -> str:
    """running (its lock is held), finished (summary.json), interrupted (checkpoints but no summary), failed."""
    if is_held(path):
        return "running"
    if (path / "summary.json").is_file():
        return "finished"
    if any((path / "checkpoints").glob("*.ckpt")):
        return "interrupted"
    return "failed"


def describe(path: Path) -> dict:
    """One run directory as a row of `metareg runs`."""
    summary, config = _read_json(path / "summary.json"), _read_config(path / "config.yaml")
    state = status(path)
    wall = summary.get("wall_seconds", summary.get("train_seconds"))
    if state == "running":
        started = (holder(path) or {}).get("started")
        wall = round(time.time() - started, 1) if isinstance(started, (int, float)) else None
    return {
        "run": path.name,
        "path": str(path),
        "status": state,
        "strategy": summary.get("strategy", config.get("strategy")),
        "backbone": summary.get("backbone", config.get("backbone")),
        "dataset": summary.get("dataset", config.get("dataset")),
        "ways": summary.get("ways", config.get("test_ways") or config.get("ways")),
        "shots": summary.get("shots", config.get("test_shots") or config.get("shots")),
        "accuracy": summary.get("accuracy"),
        "ci95": summary.get("ci95"),
        "episodes": summary.get("episodes"),
        "steps": _steps(path),
        "wall_seconds": wall,
    }


def find_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root``: marked ones, and unmarked ones that look like runs (older)."""
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a directory; name the directory that holds your runs (default runs/)")
    if read_marker(root) == "run":  # `metareg runs runs/one`: that run's row
        return [root]
    try:
        children = sorted(root.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot read {str(root)!r}: {exc.strerror or exc}") from None
    found = []
    for child in children:
        if not child.is_dir() or child.is_symlink():
            continue
        kind = read_marker(child)
        if kind == "run" or (kind is None and not (child / MARKER).exists() and (child / "config.yaml").is_file()):
            found.append(child)
    return found


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@click.command("runs")
@click.argument("directory", required=False, default="runs", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def runs_cmd(directory: Path, as_json: bool) -> None:
    """List the runs under DIRECTORY (default runs/): settings, accuracy ± 95% CI, steps, wall time, status."""
    from metareg.cli.catalogue import print_table

    rows = [describe(p) for p in find_runs(directory)]
    if as_json:
        click.echo(json.dumps({"schema": 1, "runs": rows}, indent=2))
        return
    if not rows:
        click.echo(f"no runs under {str(directory)!r}")
        return
    table = [("RUN", "STATUS", "STRATEGY", "BACKBONE", "DATASET", "WAYS/SHOTS", "ACCURACY", "STEPS", "WALL")]
    for r in rows:
        acc = (f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f} %"
               if isinstance(r["accuracy"], (int, float)) and isinstance(r["ci95"], (int, float)) else "-")
        table.append((r["run"], r["status"], r["strategy"] or "-", r["backbone"] or "-", r["dataset"] or "-",
                      f"{r['ways'] or '?'}w{r['shots'] or '?'}s", acc,
                      "-" if r["steps"] is None else r["steps"], _duration(r["wall_seconds"])))
    print_table(table)


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN]...", type=click.Path(path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG of the per-episode differences here (outside any run directory).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare_cmd(runs: tuple[Path, ...], plot_path: Path | None, as_json: bool) -> None:
    """Compare RUN_A with RUN_B [...] episode by episode on their shared fixed test episodes.

    Each further run is paired with RUN_A: mean accuracy difference ± 95% CI (Student's t), paired t-test and
    Wilcoxon signed-rank p-values, and a verdict. Runs tested on different episodes are refused.
    """
    from metareg import compare

    if len(runs) < 2:
        raise ConfigError("metareg compare needs at least two runs: RUN_A RUN_B [...]")
    tested = [compare.load(p) for p in runs]
    for other in tested[1:]:
        compare.check_same_episodes(tested[0], other)
    target = compare.check_plot_path(plot_path, tested) if plot_path is not None else None
    base = tested[0]
    results = [(other.name, compare.paired(base, other)) for other in tested[1:]]
    if as_json:
        doc = {"schema": 1, "baseline": str(base.path), "episode_settings": base.settings,
               "comparisons": [{"run": str(o.path), **p.as_dict(),
                                "verdict": compare.verdict(base.name, o.name, p)}
                               for o, (_, p) in zip(tested[1:], results, strict=True)]}
        click.echo(json.dumps(doc, indent=2))
    else:
        s = base.settings
        click.echo(f"{len(base.accuracies)} shared test episodes ({s['dataset']}, {s['ways']}-way {s['shots']}-shot, "
                   f"{s['queries']} queries, seed {s['seed']}); differences are RUN − {base.name}")
        for name, p in results:
            click.echo(f"{name} − {base.name}: {100 * p.mean:+.2f} ± {100 * p.ci95:.2f} points (95% CI), "
                       f"paired t-test p = {p.t_p:.3g}, Wilcoxon p = {p.wilcoxon_p:.3g} ({p.wilcoxon_method})")
            click.echo(compare.verdict(base.name, name, p))
        if len(results) > 1:
            click.echo("note: each run is tested against the first separately; with several runs, some p-values "
                       "fall below 0.05 by chance (divide 0.05 by the number of comparisons to be safe)")
    if target is not None:
        compare.plot(target, base.name, results)
        if not as_json:
            click.echo(f"plot: {target}")
