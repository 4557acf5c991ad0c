"""Option and setting names from learn2learn's Lightning modules (Flash passes them on) and Flash.

The one table of old names. Settings (``RunConfig`` fields) are renamed in metareg.config;
component options are renamed in metareg.options, where the factory's real options are
known: an old name that is a real option of the component stays what it is. Each old
name used prints one note on stderr per process, so configs keep working and people
learn the new names.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Legacy:
    old: str
    new: str
    source: str  # "Flash" or "learn2learn"
    where: str  # "setting" (a RunConfig field), "option" (a component option) or "flash section" (see below)


NAMES: tuple[Legacy, ...] = (
    Legacy("distance_metric", "distance", "learn2learn", "option"),
    Legacy("svm_C_reg", "svm_c", "learn2learn", "option"),
    Legacy("svm_max_iters", "svm_iterations", "learn2learn", "option"),
    Legacy("scheduler_step", "step_size", "learn2learn", "setting"),
    Legacy("scheduler_decay", "gamma", "learn2learn", "setting"),
    Legacy("train_ways", "ways", "learn2learn", "setting"),
    Legacy("train_shots", "shots", "learn2learn", "setting"),
    Legacy("train_queries", "queries", "learn2learn", "setting"),
    # Flash's Learn2LearnAdapter spelt these in the singular; only inside its training_strategy_kwargs.
    Legacy("num_task", "num_tasks", "Flash", "flash section"),
    Legacy("test_num_task", "test_num_tasks", "Flash", "flash section"),
)
OPTIONS = {n.old: n for n in NAMES if n.where == "option"}
SETTINGS = {n.old: n for n in NAMES if n.where == "setting"}
SECTION_SETTINGS = {n.old: n for n in NAMES if n.where == "flash section"}
# Flash's `training_strategy_kwargs` mapping holds the episode settings, which metareg keeps at the top level.
FLASH_EPISODE_SECTION = "training_strategy_kwargs"

_noted: set[str] = set()


def note(old: str, new: str, source: str, text: str | None = None) -> None:
    if old in _noted:
        return
    _noted.add(old)
    print(text or f"note: {old!r} is {source}'s name; metareg calls it {new!r}", file=sys.stderr)


def rename(given: dict, real: set[str], table: dict[str, Legacy], what: str, error: type[Exception]) -> dict:
    """``given`` with old names in ``table`` renamed, unless the old name is one of the ``real`` names."""
    out = dict(given)
    for old, legacy in table.items():
        if old not in out or old in real or legacy.new not in real:
            continue
        if legacy.new in out:
            raise error(f"{what}: both {old!r} ({legacy.source}'s name) and {legacy.new!r} are given; "
                             f"keep only {legacy.new!r}")
        out[legacy.new] = out.pop(old)
        note(old, legacy.new, legacy.source)
    return out


def flatten_flash_section(source: dict, settings: set[str], error: type[Exception]) -> dict:
    """Flash's ``training_strategy_kwargs`` spread out: settings to the top level, the rest to strategy_options.

    Flash kept the episode settings (ways, shots, ...) and the learn2learn algorithm's own
    arguments in that one mapping; the strategy's options are checked against the strategy later.
    """
    if FLASH_EPISODE_SECTION not in source:
        return source
    section = source[FLASH_EPISODE_SECTION]
    if section is None:
        section = {}
    if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
        raise error(f"{FLASH_EPISODE_SECTION} must be a mapping of names to values, got {section!r}")
    out = {k: v for k, v in source.items() if k != FLASH_EPISODE_SECTION}
    strategy_options = dict(out.get("strategy_options") or {})
    for key, value in section.items():
        key = key.replace("-", "_")
        if key in SECTION_SETTINGS:
            note(key, SECTION_SETTINGS[key].new, "Flash")
            key = SECTION_SETTINGS[key].new
        target = key if key in settings or key in SETTINGS else None
        holder, name = (out, target) if target else (strategy_options, key)
        if name in holder:
            where = "at the top level" if target else "in strategy_options"
            raise error(f"{key!r} is given both in {FLASH_EPISODE_SECTION} and {where}; keep only one")
        holder[name] = value
    if strategy_options:
        out["strategy_options"] = strategy_options
    note(FLASH_EPISODE_SECTION, "", "Flash", f"note: {FLASH_EPISODE_SECTION!r} is Flash's section; metareg reads "
         "its episode settings (ways, shots, ...) as top-level settings and the rest as strategy_options")
    return out
