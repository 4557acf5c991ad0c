"""A paper's results table from finished runs (``metareg table``): one row per method, seeds aggregated.

Each row holds the runs that share the ``--by`` values (a strategy, say) and differ only in their
seed. Its accuracy is the mean of the seeds' mean test accuracies, with two 95% intervals:

- across seeds: Student's t over the seeds' means (how much training luck moves the result);
- over episodes: the mean of the runs' own intervals over their test episodes (how much the
  choice of test episodes moves one run's result).

Test episodes are a function of the seed and the test settings, so the runs of two rows with the
same seed saw the same episodes: against a baseline row, the per-episode differences of every seed
are pooled and tested with metareg.compare's paired statistics. Runs tested on other episodes are
refused, as `metareg compare` refuses them. No torch here: a table reads files.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from metareg import compare, kinds
from metareg.config import OPTION_SECTIONS
from metareg.errors import ConfigError
from metareg.evaluation import ci95_halfwidth
from metareg.rundir import read_marker

# Settings that do not change what a run computes: runs of one row may differ in them (and in their seed).
NOT_A_METHOD = frozenset({"seed", "output_dir", "progress", "accelerator", "devices", "num_nodes", "trainer_strategy",
                          "logger", "eval_meta_batch_size", "test_ways", "test_shots", "test_queries",
                          "test_num_tasks", "trainer_options"})
COMPONENTS = {k.config_field: k for k in kinds.ALL}
PROTOCOL = re.compile(r"^(\d+)w(\d+)s(?:(\d+)q)?$")


@dataclass(frozen=True)
class Tested:
    """One run's test at the table's protocol: the run's own, or a `metareg eval` of it."""

    path: Path
    config: dict
    summary: dict
    episodes: compare.TestedRun

    @property
    def seed(self):
        return self.episodes.settings["seed"]

    @property
    def protocol(self) -> tuple:
        s = self.episodes.settings
        return s["ways"], s["shots"], s["queries"]


@dataclass
class Row:
    label: tuple[str, ...]
    runs: list[Tested]
    mean: float
    ci_seeds: float
    ci_episodes: float
    paired: compare.Paired | None = None


def run_directories(paths) -> list[Path]:
    """Sweep folders (their members), run directories, and folders of runs, expanded to run directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        index = path / "sweep.json"
        if index.is_file():
            try:
                members = json.loads(index.read_text())["members"]
            except (OSError, ValueError, KeyError, TypeError):
                raise ConfigError(f"{str(index)!r} is not a readable sweep index") from None
            found += [path / m["run_dir"] for m in members if (path / m["run_dir"] / "summary.json").is_file()]
        elif read_marker(path) in ("run", "eval") or (path / "test_episodes.csv").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(c for c in path.iterdir() if c.is_dir() and read_marker(c) == "run"
                            and (c / "summary.json").is_file())
        else:
            raise ConfigError(f"{str(path)!r} is neither a run directory nor a sweep folder; name what "
                              "`metareg runs` or `metareg sweep` wrote")
    if not found:
        raise ConfigError(f"no finished runs under {', '.join(map(str, paths))}")
    return found


def _load(path: Path) -> Tested:
    def read(name: str, parse) -> dict:
        try:
            data = parse((path / name).read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    return Tested(path, read("config.yaml", yaml.safe_load), read("summary.json", json.loads), compare.load(path))


def tests_at(run: Path, protocol: tuple | None) -> list[Tested]:
    """The run's own test and its `metareg eval` directories, those at ``protocol`` (ways, shots, queries|None)."""
    candidates = [run, *sorted(c for c in run.iterdir() if c.is_dir() and read_marker(c) == "eval"
                               and (c / "test_episodes.csv").is_file())] if run.is_dir() else [run]
    tested = [_load(c) for c in candidates if (c / "test_episodes.csv").is_file() or c == run]
    if protocol is None:
        return tested[:1]
    ways, shots, queries = protocol
    return [t for t in tested if (t.protocol[0], t.protocol[1]) == (ways, shots)
            and (queries is None or t.protocol[2] == queries)]


def parse_protocol(text: str | None) -> tuple | None:
    if text is None:
        return None
    m = PROTOCOL.match(text.strip().lower())
    if not m:
        raise ConfigError(f"--protocol {text!r}: write ways and shots as 5w1s (or 5w1s15q with queries)")
    return int(m[1]), int(m[2]), int(m[3]) if m[3] else None


def _canonical(kind: kinds.Kind, name: str) -> str:
    """An alias typed in an older run's config, as the name it stands for (when that plugin is installed)."""
    from metareg.errors import MetaregError
    from metareg.registry import Registry

    try:
        return Registry.current().get(kind.plural, name).record.name
    except MetaregError:
        return name


def _recorded_options(t: Tested, section: str) -> dict | None:
    kind = next((k for k in kinds.ALL if k.options_field == section), None)
    recorded = (t.summary.get("components") or {}).get(kind.singular) if kind else None
    return recorded.get("options") if isinstance(recorded, dict) else None


def value(t: Tested, key: str) -> str:
    """A run's value of a --by key: a component (its canonical name), a setting, or ``section.option``."""
    head, dot, option = key.partition(".")
    recorded = t.summary.get("components") or {}
    if not dot and head in COMPONENTS:
        kind = COMPONENTS[head]
        name = (recorded.get(kind.singular) or {}).get("name")
        return str(name) if name else _canonical(kind, str(t.config.get(head, t.summary.get(head))))
    if dot:
        options = _recorded_options(t, head)
        if options is None:  # a run from before summary.json recorded every option: what its config gave
            options = t.config.get(head) or {}
        return str(options[option]) if option in options else "default"
    return str(t.config.get(key))


def check_by(keys: list[str]) -> None:
    from metareg.config import RunConfig

    for key in keys:
        head, dot, option = key.partition(".")
        ok = (head in OPTION_SECTIONS and option) if dot else (key in RunConfig.keys() and key not in NOT_A_METHOD)
        if not ok:
            raise ConfigError(f"--by {key!r}: name a component (strategy, backbone, dataset, transform), a setting "
                              f"that changes the method (lr, shots, ...) or an option (strategy_options.NAME)")


def _differences(a: Tested, b: Tested, by: list[str]) -> list[str]:
    keys = {*a.config, *b.config} - NOT_A_METHOD - set(by)
    out = []
    for key in sorted(keys):
        if key in COMPONENTS:
            if value(a, key) != value(b, key):
                out.append(key)
        elif key in OPTION_SECTIONS:  # as recorded with their defaults: `temperature: 1` typed or not is one method
            names = {o for t in (a, b) for o in (*(t.config.get(key) or {}), *(_recorded_options(t, key) or {}))}
            out += [f"{key}.{o}" for o in sorted(names)
                    if f"{key}.{o}" not in by and value(a, f"{key}.{o}") != value(b, f"{key}.{o}")]
        elif a.config.get(key) != b.config.get(key):
            out.append(key)
    return out


def build(paths, by: list[str], protocol_text: str | None = None, baseline: str | None = None) -> list[Row]:
    """The table's rows; refuses rows that mix methods, repeated seeds and runs tested on other episodes."""
    check_by(by)
    protocol = parse_protocol(protocol_text)
    tested: list[Tested] = []
    for run in run_directories(paths):
        found = tests_at(run, protocol)
        if len(found) > 1:
            raise ConfigError(f"{str(run)!r} was tested at {protocol_text} more than once "
                              f"({', '.join(t.path.name for t in found)}); name the one to use")
        tested += found
    if not tested:
        raise ConfigError(f"no run was tested at {protocol_text}; test them with `metareg eval RUN/checkpoints/"
                          "last.ckpt --test-ways ... --test-shots ...` first")
    protocols = sorted({t.protocol for t in tested}, key=str)
    if len(protocols) > 1:
        raise ConfigError(f"these runs were tested at {', '.join(f'{w}w{s}s{q}q' for w, s, q in protocols)}; "
                          "choose one with --protocol")
    groups: dict[tuple, list[Tested]] = {}
    for t in tested:
        groups.setdefault(tuple(value(t, k) for k in by), []).append(t)
    for label, runs in groups.items():
        _check_group(label, runs, by)
    rows = [_row(label, runs) for label, runs in groups.items()]
    _check_episodes(rows)
    if baseline is not None:
        _pair(rows, baseline)
    return rows


def _check_group(label: tuple, runs: list[Tested], by: list[str]) -> None:
    for t in runs:  # first: two seeds of different methods would otherwise read as a repeated seed
        differ = _differences(runs[0], t, by)
        if differ:
            raise ConfigError(f"row {', '.join(label)!r} mixes runs that differ in {', '.join(differ)} "
                              f"({runs[0].path.name} and {t.path.name}); add --by {differ[0]} to give each its row")
    seeds: dict = {}
    for t in runs:
        if t.seed in seeds:
            raise ConfigError(f"row {', '.join(label)!r} has two runs with seed {t.seed} ({str(seeds[t.seed].path)!r} "
                              f"and {str(t.path)!r}); a row aggregates one run per seed: name only one of them")
        seeds[t.seed] = t


def _row(label: tuple, runs: list[Tested]) -> Row:
    runs = sorted(runs, key=lambda t: t.seed)
    means = [sum(t.episodes.accuracies.values()) / len(t.episodes.accuracies) for t in runs]
    cis = [ci95_halfwidth(list(t.episodes.accuracies.values())) for t in runs]
    return Row(label, runs, sum(means) / len(means), ci95_halfwidth(means), sum(cis) / len(cis))


def _check_episodes(rows: list[Row]) -> None:
    first = rows[0]
    for row in rows[1:]:
        if [t.seed for t in row.runs] != [t.seed for t in first.runs]:
            raise ConfigError(f"rows {', '.join(first.label)!r} and {', '.join(row.label)!r} have different seeds "
                              f"({[t.seed for t in first.runs]} vs {[t.seed for t in row.runs]}), so they were not "
                              "tested on the same episodes; finish the missing runs (`metareg sweep` resumes them)")
        for a, b in zip(first.runs, row.runs, strict=True):
            compare.check_same_episodes(a.episodes, b.episodes)


def _pair(rows: list[Row], baseline: str) -> None:
    base = next((r for r in rows if ", ".join(r.label) == baseline), None)
    if base is None:
        raise ConfigError(f"--baseline {baseline!r} names no row; the rows are "
                          f"{', '.join(repr(', '.join(r.label)) for r in rows)}")
    for row in rows:
        if row is base:
            continue
        d = [b.episodes.accuracies[i] - a.episodes.accuracies[i]
             for a, b in zip(base.runs, row.runs, strict=True) for i in sorted(a.episodes.accuracies)]
        row.paired = compare.paired_differences(d)


__all__ = ["Row", "build", "run_directories"]
