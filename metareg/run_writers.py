"""Lightning's writers, adapted to a run directory that is self-contained and never half-written.

- :class:`RunCheckpoint` records the checkpoints it tracks by file name, not by absolute
  path, so a copied or moved run resumes from (and is tested with) its own files.
  Lightning's ``ModelCheckpoint`` stores absolute paths and, in a moved run, still
  reloads the original directory's ``best_model_path``.
- :class:`MetricsLogger` writes ``metrics.csv`` whole and atomically at each save and,
  on resume, keeps the rows logged before it. Lightning's CSV logger deletes the file
  when it starts and appends to or rewrites it in place, so a run killed during a resume
  lost the earlier rows, and one killed mid-write left a torn file.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from metareg.files import atomic_write

_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


def _name(path: str) -> str:
    # Every file this callback tracks lies in its own dirpath, so the name is the whole story.
    return Path(path).name if path else ""


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saved state names its files relative to ``dirpath``."""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["dirpath"] = "."
        for key in _PATHS:
            state[key] = _name(state[key])
        state["best_k_models"] = {_name(k): v for k, v in state["best_k_models"].items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Names (or absolute paths from older runs) are re-anchored to this run's checkpoint directory.
        base = Path(self.dirpath)
        state = dict(state_dict, dirpath=self.dirpath)
        for key in _PATHS:
            if state.get(key):
                state[key] = str(base / _name(state[key]))
        if "best_k_models" in state:
            state["best_k_models"] = {str(base / _name(k)): v for k, v in state["best_k_models"].items()}
        super().load_state_dict(state)


class _MetricsWriter:
    """Rows logged so far plus the rows from before a resume, rewritten atomically at each save."""

    def __init__(self, path: Path, keep_earlier: bool):
        self.path = path
        self.earlier = _read_rows(path) if keep_earlier else []
        self.rows: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []  # Lightning's writer has it; some callers read it

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics_dict.items()}
        row["step"] = len(self.rows) + len(self.pending) if step is None else step
        self.pending.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        pass  # the run's settings live in config.yaml

    def save(self) -> None:
        if not self.pending and self.path.is_file():
            return
        self.rows += self.pending
        self.pending = []
        first_new = min((int(r["step"]) for r in self.rows), default=None)
        # Steps from the last checkpoint on are logged again after a resume: the new rows replace them.
        rows = [r for r in self.earlier if first_new is None or int(r["step"]) < first_new] + self.rows
        keys = sorted({k for r in rows for k in r} | {"epoch", "step"}, key=lambda k: (k not in ("epoch", "step"), k))
        self.metrics_keys = keys
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, text.getvalue())


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]
    except FileNotFoundError:
        return []


class MetricsLogger(CSVLogger):
    """``CSVLogger`` writing ``RUN/metrics.csv`` through :class:`_MetricsWriter`."""

    def __init__(self, run_dir: Path, *, resume: bool):
        super().__init__(str(run_dir), name="", version="")
        self._keep_earlier = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> _MetricsWriter:
        if self._experiment is None:
            self._experiment = _MetricsWriter(Path(self.log_dir) / "metrics.csv", self._keep_earlier)
        return self._experiment
