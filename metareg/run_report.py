"""What a person opens after a run: ``learning_curve.png`` and ``report.html``.

The report is one self-contained file (the figure inline as a base64 PNG, no script, no
network): the test accuracy with its 95% confidence interval, what ran, where and from
which code, and the learning curves (training loss; training and validation accuracy).
Its figure is the same PNG as ``learning_curve.png``, drawn once.

The curves come from ``metrics.csv``. When that file is missing or unreadable the report
says so in place of the figure: the test result comes from the test episodes, not from it.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareg.files import atomic_write

REPORT = "report.html"
CURVE = "learning_curve.png"


class MetricsUnreadable(Exception):
    """metrics.csv cannot give learning curves; the message says why."""


@dataclass
class Curves:
    loss: list[tuple[int, float]] = field(default_factory=list)  # (optimizer step, training loss)
    train_acc: list[tuple[int, float]] = field(default_factory=list)  # (step, %)
    val_acc: list[tuple[int, float]] = field(default_factory=list)  # (step, %)


def read_curves(path: Path) -> Curves:
    """The curves in a run's ``metrics.csv``; :class:`MetricsUnreadable` saying why when there are none."""
    curves = Curves()
    try:
        with open(path, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                if None in row or None in row.values():  # more or fewer fields than the header names
                    raise MetricsUnreadable(f"{path.name} is damaged: line {line} does not match its header")
                try:
                    step = int(row["step"])
                    for key, points, scale in (("train_loss", curves.loss, 1), ("train_acc", curves.train_acc, 100),
                                               ("val_acc", curves.val_acc, 100)):
                        if row.get(key):
                            value = float(row[key])
                            if math.isfinite(value):
                                points.append((step, scale * value))
                except (KeyError, ValueError) as exc:
                    raise MetricsUnreadable(f"{path.name} is damaged: line {line}: {exc}") from None
    except FileNotFoundError:
        raise MetricsUnreadable(f"{path.name} does not exist: nothing was logged during training") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetricsUnreadable(f"{path.name} cannot be read: {exc}") from None
    if not (curves.loss or curves.val_acc):
        raise MetricsUnreadable(f"{path.name} holds no training loss or validation accuracy")
    return curves


def draw(curves: Curves, title: str) -> bytes:
    """Loss beside accuracy, as PNG bytes (matplotlib's object API: no global pyplot state, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    if curves.loss:
        loss_ax.plot(*zip(*curves.loss, strict=True), color="tab:blue")
    loss_ax.set(xlabel="optimizer step", ylabel="training loss", title="loss")
    if curves.train_acc:
        acc_ax.plot(*zip(*curves.train_acc, strict=True), color="tab:blue", alpha=0.6, label="training")
    if curves.val_acc:
        acc_ax.plot(*zip(*curves.val_acc, strict=True), "o-", color="tab:orange", label="validation")
    acc_ax.set(xlabel="optimizer step", ylabel="accuracy (%)", title="accuracy")
    if curves.train_acc or curves.val_acc:
        acc_ax.legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()


def learning_curve(run_dir: Path) -> tuple[bytes | None, str | None]:
    """Draw ``run_dir/learning_curve.png`` from its metrics: ``(png, None)``, or ``(None, why not)``."""
    try:
        curves = read_curves(run_dir / "metrics.csv")
    except MetricsUnreadable as exc:
        return None, str(exc)
    png = draw(curves, run_dir.name)
    atomic_write(run_dir / CURVE, png)
    return png, None


def write_report(run_dir: Path, summary: dict[str, Any], png: bytes | None, missing: str | None) -> Path:
    """``run_dir/report.html`` from the run's ``summary`` and its figure (or why there is none)."""
    esc = html.escape
    title = f"metareg: {run_dir.name}"
    rows = [(label, summary.get(key)) for label, key in (
        ("strategy", "strategy"), ("backbone", "backbone"), ("transform", "transform"), ("dataset", "dataset"),
        ("seed", "seed"), ("checkpoint tested", "best_checkpoint"), ("checkpoint", "checkpoint"),
        ("training time (s)", "train_seconds"), ("wall time (s)", "wall_seconds"), ("device", "device"),
    )]
    options = summary.get("options") or {}
    rows += [(f"{kind} options", ", ".join(f"{k}={v}" for k, v in opts.items()))
             for kind, opts in options.items() if opts]
    git = summary.get("git")
    if git:
        rows.append(("git commit", git.get("commit", "") + (" (with uncommitted changes)" if git.get("dirty") else "")))
    versions = summary.get("versions") or {}
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if isinstance(v, str))))
    table = "\n".join(f"<tr><th>{esc(label)}</th><td>{esc(str(value))}</td></tr>" for label, value in rows
                      if value not in (None, ""))
    if png is not None:
        figure = (f'<img alt="training loss, training and validation accuracy by optimizer step" '
                  f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    else:
        figure = f'<p class="missing">No learning curves: {esc(missing or "none were recorded")}.</p>'
    accuracy = summary.get("accuracy")
    result = (f"{100 * accuracy:.1f} ± {100 * summary.get('ci95', 0.0):.1f} %" if isinstance(accuracy, float)
              else "no result")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }}
.accuracy {{ font-size: 2em; margin: 0.2em 0; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; vertical-align: top; }}
img {{ max-width: 100%; }}
.missing {{ color: #a33; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<h2>Test accuracy</h2>
<p class="accuracy">{esc(result)}</p>
<p>{esc(str(summary.get("line", "")))}</p>
<h2>Learning curves</h2>
{figure}
<h2>Run</h2>
<table>
{table}
</table>
</body>
</html>
"""
    atomic_write(run_dir / REPORT, page)
    return run_dir / REPORT
