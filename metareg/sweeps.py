"""Sweeps: every combination of a grid of settings, each in its own run directory under one folder.

    metareg sweep experiment.yaml --grid seed=0,1,2 --grid strategy_options.temperature=1,10

Layout of a sweep folder::

    SWEEP/sweep.json          the index: the base settings, the grid, and per member its overrides,
                              run directory (relative), status, accuracy and error line
    SWEEP/configs/NAME.yaml   each member's full settings (`metareg run --config` reads them)
    SWEEP/NAME/               each member's run directory, claimed and written by `metareg run`
    SWEEP/.metareg-sweep-lock held (flock) by the sweep that runs the folder

Every member is a subprocess of `metareg run`: it claims its own directory, and a crash, an
out-of-memory kill or a Ctrl-C of one member leaves the others and the index intact. Running
the same command again continues the folder: finished members are skipped, interrupted ones
continue with ``--resume``, and grid values added since join the index. Every member's settings
are checked (component names and options included) before the first one starts.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from metareg.config import MAPPING_SECTIONS, RunConfig
from metareg.errors import ConfigError, MetaregError
from metareg.files import atomic_write
from metareg.rundir import is_held, read_marker

INDEX = "sweep.json"
LOCK = ".metareg-sweep-lock"
SCHEMA = 1
# Settings the sweep decides for each member, so neither the grid nor the comparison of base settings holds them.
SWEEP_DECIDES = ("output_dir", "progress")


@dataclass
class Member:
    """One combination of the grid."""

    name: str  # its run directory's name inside the sweep folder
    overrides: dict[str, Any]  # grid key -> value, in grid order
    config: RunConfig | None = None
    status: str = "pending"  # pending, running, finished, interrupted, failed
    accuracy: float | None = None
    ci95: float | None = None
    error: str | None = None

    @property
    def key(self) -> tuple:
        return identity(self.overrides)

    def as_dict(self) -> dict:
        return {"name": self.name, "overrides": self.overrides, "run_dir": self.name,
                "config": f"configs/{self.name}.yaml", "status": self.status, "accuracy": self.accuracy,
                "ci95": self.ci95, "error": self.error}


@dataclass
class Sweep:
    """A sweep folder and its members (what :func:`sweep` returns, and what sweep.json records)."""

    path: Path
    settings: dict
    grid: dict[str, list]
    members: list[Member] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.members:
            out[m.status] = out.get(m.status, 0) + 1
        return out


def identity(overrides: Mapping[str, Any]) -> tuple:
    # Values compared as text: `--grid seed=1` and a re-read sweep.json's "1" name the same member.
    return tuple(sorted((k, str(v)) for k, v in overrides.items()))


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """``["seed=0,1", "strategy_options.temperature=1,10"]`` -> ``{"seed": ["0", "1"], ...}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not any(parts):
            raise ConfigError(f"--grid expects KEY=VALUE[,VALUE...], got {item!r} (e.g. --grid seed=0,1,2)")
        if any(not v for v in parts):
            raise ConfigError(f"--grid {item!r} has an empty value; separate values with single commas")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; give all its values at once: --grid {key}=A,B,C")
        grid[key] = parts
    return grid


def _check_key(key: str, values: list) -> None:
    head, dot, option = key.partition(".")
    if dot:
        if head not in MAPPING_SECTIONS or not option or "." in option:
            raise ConfigError(f"grid key {key!r}: a dotted key names one option of "
                              f"{', '.join(s + '.NAME' for s in MAPPING_SECTIONS)}")
    elif key in MAPPING_SECTIONS:
        raise ConfigError(f"grid key {key!r} is a section; name one of its options: {key}.NAME=A,B")
    elif key in SWEEP_DECIDES:
        raise ConfigError(f"grid key {key!r} is set by the sweep for each member; choose the folder with -o")
    if not values:
        raise ConfigError(f"grid key {key!r} has no values")
    if len({str(v) for v in values}) != len(values):
        raise ConfigError(f"grid key {key!r} repeats a value ({', '.join(map(str, values))})")


def _apply(settings: dict, overrides: Mapping[str, Any]) -> dict:
    out = dict(settings)
    for key, value in overrides.items():
        head, dot, option = key.partition(".")
        if dot:
            out[head] = {**(out.get(head) or {}), option: value}
        else:
            out[key] = value
    return out


def _names(grid: dict[str, list], combos: list[dict]) -> list[str]:
    """Directory names like ``seed-0__temperature-10``: the option's own name unless two keys share it."""
    short = {k: k.rpartition(".")[2] for k in grid}
    label = {k: (s if list(short.values()).count(s) == 1 else k) for k, s in short.items()}
    names = []
    for combo in combos:
        name = "__".join(f"{label[k]}-{re.sub(r'[^A-Za-z0-9.+-]', '_', str(v))}" for k, v in combo.items())
        names.append(name[:120])
    if len(set(names)) != len(names):  # values that differ only in characters replaced above
        names = [f"{i:03d}-{n[:110]}" for i, n in enumerate(names)]
    return names


def base_settings(config: str | os.PathLike | Mapping | RunConfig | None) -> dict:
    """The settings every member starts from: a YAML file, a dict or a RunConfig."""
    if isinstance(config, RunConfig):
        settings = config.to_dict()
    elif isinstance(config, Mapping):
        settings = dict(config)
    elif config is None:
        settings = {}
    else:
        settings = RunConfig.load_yaml(config)
    settings = RunConfig.from_sources(settings).to_dict()
    return {k: v for k, v in settings.items() if k not in SWEEP_DECIDES}


def plan(settings: dict, grid: Mapping[str, Iterable], registry=None) -> list[Member]:
    """Every combination of ``grid`` over ``settings``, each member's settings and components checked."""
    from metareg.build import with_component_defaults

    grid = {str(k).replace("-", "_"): list(v) for k, v in grid.items()}
    if not grid:
        raise ConfigError("a sweep needs at least one --grid KEY=VALUE[,VALUE...]")
    for key, values in grid.items():
        _check_key(key, values)
    combos = [dict(zip(grid, values, strict=True)) for values in product(*grid.values())]
    members = []
    for name, combo in zip(_names(grid, combos), combos, strict=True):
        try:
            config = RunConfig.from_sources(_apply(settings, combo))
            with_component_defaults(config, registry)  # component names and option values, as --print-config
        except MetaregError as exc:
            what = ", ".join(f"{k}={v}" for k, v in combo.items())
            raise type(exc)(f"sweep member {what}: {exc}") from None
        members.append(Member(name, combo, config.replace(output_dir=None, progress=False)))
    return members


def check_folder(path: Path, settings: dict) -> dict | None:
    """Refuse a folder that is not a sweep's or holds a sweep of other base settings; its index, if any."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"sweep folder {str(path)!r} is a file; choose a new or empty folder with -o")
    if not path.exists() or not {p.name for p in path.iterdir()} - {LOCK}:
        return None
    index = path / INDEX
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{str(path)!r} is not empty and holds no readable {INDEX}; a sweep writes only into a new "
                          "or empty folder or one of its own: choose another -o (nothing was touched)") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("members"), list):
        raise ConfigError(f"{str(index)!r} is not a sweep index of schema {SCHEMA}; choose another -o")
    saved = json.loads(json.dumps(doc.get("settings")))
    if saved != json.loads(json.dumps(settings)):
        differ = sorted(k for k in {*settings, *(saved or {})} if (saved or {}).get(k) != settings.get(k))
        raise ConfigError(f"{str(path)!r} holds a sweep of other base settings ({', '.join(differ) or 'all'} "
                          "differ); continue it with its own config, or choose another -o for a new sweep")
    return doc


def state(run_dir: Path) -> str:
    """A member's status as its directory tells it."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "pending"
    if read_marker(run_dir) != "run":
        return "failed"
    if is_held(run_dir):
        return "running"
    return "finished" if (run_dir / "summary.json").is_file() else "interrupted"


class _Index:
    """sweep.json, rewritten whole and atomically each time a member changes (one writer: the sweep's process)."""

    def __init__(self, sweep: Sweep, config_name: str | None):
        self.sweep, self.config_name, self._lock = sweep, config_name, threading.Lock()

    def write(self) -> None:
        with self._lock:
            doc = {"schema": SCHEMA, "config": self.config_name, "settings": self.sweep.settings,
                   "grid": self.sweep.grid, "updated": datetime.now().astimezone().isoformat(timespec="seconds"),
                   "members": [m.as_dict() for m in self.sweep.members]}
            atomic_write(self.sweep.path / INDEX, json.dumps(doc, indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"sweep folder {str(path)!r} is in use by another `metareg sweep`; wait for it to end "
                              "or choose another -o") from None
        yield
    finally:
        os.close(fd)


def _merge(members: list[Member], doc: dict | None) -> list[Member]:
    """This grid's members, then those of earlier invocations that it does not name (kept in the index)."""
    if doc is None:
        return members
    known = {identity(m.get("overrides") or {}): m for m in doc["members"] if isinstance(m, dict)}
    for m in members:  # a member keeps the directory it was given first
        old = known.pop(m.key, None)
        if old and isinstance(old.get("name"), str) and "/" not in old["name"] and old["name"] not in ("", ".", ".."):
            m.name = old["name"]
    extra = [Member(str(m["name"]), dict(m.get("overrides") or {}), None, str(m.get("status", "pending")),
                    m.get("accuracy"), m.get("ci95"), m.get("error")) for m in known.values()]
    return members + extra


def sweep(config: str | os.PathLike | Mapping | RunConfig | None, grid: Mapping[str, Iterable], *,
          output_dir: str | os.PathLike | None = None, jobs: int = 1,
          echo: Callable[[str], Any] | None = None) -> Sweep:
    """Run every combination of ``grid`` over ``config``; resumable. Returns the sweep and its members' states.

    ``config``: a YAML file, a dict of settings or a :class:`RunConfig`. ``grid``: setting or
    ``section.option`` -> values, e.g. ``{"seed": [0, 1, 2], "strategy_options.temperature": [1, 10]}``.
    ``jobs=1`` runs the members one after another in this process; ``jobs=N`` runs N at once, each a
    `metareg run` process. ``echo`` (e.g. ``print``) receives one
    line per member. Members that fail are recorded with their error line; nothing is raised for them.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    grid = {str(k).replace("-", "_"): list(v) for k, v in grid.items()}  # values read once, keys as settings
    settings = base_settings(config)
    members = plan(settings, grid)  # every member checked before any folder is touched
    if output_dir is None:
        stem = Path(config).stem if isinstance(config, (str, os.PathLike)) else "sweep"
        output_dir = Path("sweeps") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{stem}"
    path = Path(output_dir).resolve()
    doc = check_folder(path, settings)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the sweep folder {str(path)!r}: {exc.strerror or exc}") from None
    with _locked(path):
        doc = check_folder(path, settings)  # again, now that no other sweep can change it
        result = Sweep(path, settings, grid, _merge(members, doc))
        for m in result.members:
            m.status = state(path / m.name)  # the directories, not the index, say what ran
        _run_all(result, [m for m in result.members if m.config is not None], jobs, echo,
                 str(config) if isinstance(config, (str, os.PathLike)) else None)
    return result


def _finished(member: Member, summary: dict) -> None:
    member.status, member.accuracy, member.ci95 = "finished", summary.get("accuracy"), summary.get("ci95")


def run_here(folder: Path, member: Member, resume: bool) -> None:
    """One member in this process (``jobs=1``): torch and Lightning load once for the whole sweep."""
    from metareg.run import train

    try:
        result = train(member.config.replace(output_dir=str(folder / member.name)), resume=resume)
    except MetaregError as exc:
        member.status, member.error = "failed", f"Error: {exc}".splitlines()[0]
        return
    except Exception as exc:  # noqa: BLE001 - a member's crash is recorded; the other members still run
        member.status, member.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        return
    _finished(member, result.summary)


def run_member(folder: Path, member: Member, resume: bool, env: dict) -> None:
    """``metareg run`` for one member in a process of its own; its outcome goes into ``member``."""
    run_dir = folder / member.name
    command = [sys.executable, "-m", "metareg", "run", "--config", str(folder / "configs" / f"{member.name}.yaml"),
               "--output-dir", str(run_dir), "--no-progress", *(["--resume"] if resume else [])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    summary = run_dir / "summary.json"
    if done.returncode == 0 and summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            data = {}
        _finished(member, data)
        return
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    member.error = (errors or lines or [f"`metareg run` exited with status {done.returncode}"])[-1].strip()
    # Killed by a signal (out of memory, Ctrl-C): what it saved is continued next time.
    member.status = state(run_dir) if done.returncode < 0 else "failed"


def _run_all(result: Sweep, todo: list[Member], jobs: int, echo, config_name: str | None) -> None:
    index = _Index(result, config_name)
    index.write()
    say = echo or (lambda _line: None)
    total = len(todo)
    counter = iter(range(1, total + 1))
    # The members inherit the environment as it is. Fewer threads per process (OMP_NUM_THREADS) would spare the
    # cores, but torch's reductions then sum in another order: a member's accuracy would depend on --jobs (seen
    # on a 2-step run: one of 4 test episodes changed). Whoever sets it, sets it knowingly.
    env = dict(os.environ)

    def one(member: Member) -> None:
        if member.status in ("finished", "running"):
            what = "finished before" if member.status == "finished" else "running in another process"
            say(f"[{next(counter)}/{total}] {member.name}: skipped ({what})")
            return
        member.error = None
        resume = read_marker(result.path / member.name) == "run"
        atomic_write(result.path / "configs" / f"{member.name}.yaml", yaml.safe_dump(member.config.to_dict(),
                                                                                      sort_keys=False))
        member.status = "running"
        index.write()
        if jobs == 1:
            run_here(result.path, member, resume)
        else:
            run_member(result.path, member, resume, env)
        index.write()
        say(f"[{next(counter)}/{total}] {member.name}: {'resumed, ' if resume else ''}{member.status}"
            + (f" {100 * member.accuracy:.1f} ± {100 * member.ci95:.1f} %" if member.status == "finished"
               and isinstance(member.accuracy, float) and isinstance(member.ci95, float) else "")
            + (f": {member.error}" if member.error else ""))

    try:
        if jobs == 1:
            for m in todo:
                one(m)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for future in [pool.submit(one, m) for m in todo]:
                    future.result()
    finally:
        for m in todo:
            if m.status == "running" and not is_held(result.path / m.name):
                m.status = state(result.path / m.name)
        index.write()


__all__ = ["Member", "Sweep", "parse_grid", "plan", "sweep"]
