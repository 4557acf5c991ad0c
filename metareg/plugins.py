"""Finding and loading plugins from the ``metareg`` entry-point group.

Each entry point is loaded, registered and called in isolation: an invalid entry-point
value, an import error, a hook with a bad signature, a misspelt hook name or a hook
that raises (``sys.exit()`` included) marks that one plugin broken and records why;
the others keep working. (pluggy's ``load_setuptools_entrypoints`` would let one
broken plugin take everything down.)

An entry-point name belongs to one distribution. When two claim it, the one named
``metareg-<entry point>`` (the naming convention, which first-party plugins follow)
keeps it, otherwise the first found on ``sys.path``; the other is marked broken and
never imported, so a newcomer cannot displace a plugin that was there first.

Switches, each an environment variable and a global CLI flag:

* ``METAREG_STRICT=1`` / ``metareg --strict``: any plugin failure is an error that
  names the plugin's distribution.
* ``METAREG_PLUGINS=a,b`` / ``metareg --load-plugins a,b``: load only these plugins
  (entry-point or distribution names). A name that matches no plugin is an error:
  otherwise a typo would make every component vanish without a word. The core's own
  components (``metareg-core``, e.g. the default transform ``none``) load whatever the
  selection, since no user selected them; ``--disable-plugins core`` still drops them.
* ``METAREG_DISABLE_PLUGINS=a,b`` / ``metareg --disable-plugins a,b``: skip these. A
  name that matches nothing is only reported (``PluginSet.unknown_disabled``): what it
  asks for, that the plugin not load, holds either way.
"""
from __future__ import annotations

import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from metareg import hookspecs, kinds
from metareg.errors import PluginError
from metareg.records import ComponentSpec

GROUP = "metareg"
STATUS_OK, STATUS_BROKEN, STATUS_DISABLED = "ok", "broken", "disabled"


@dataclass
class PluginInfo:
    """What the core knows about one plugin, loaded or not."""

    name: str
    entry_point: str
    distribution: str | None = None
    version: str | None = None
    status: str = STATUS_OK
    error: str | None = None
    hooks: tuple[str, ...] = ()
    stage: str | None = None  # where it failed: import, register, hook name
    traceback: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        dist = self.distribution or "<no distribution>"
        return f"{self.name} ({dist} {self.version or '?'})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "hooks": list(self.hooks),
            "error": self.error,
        }


@dataclass
class Provided:
    """A component record together with the plugin that provided it."""

    record: ComponentSpec
    plugin: PluginInfo

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin.name}:{self.record.name}"


@dataclass
class PluginSet:
    """The outcome of loading plugins: who loaded, who failed, what they provide."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    provided: list[Provided] = field(default_factory=list)
    unknown_disabled: list[str] = field(default_factory=list)  # disable switch names that matched nothing

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == STATUS_BROKEN]


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def strict_from_env() -> bool:
    return os.environ.get("METAREG_STRICT", "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception as one line (pluggy's validation errors span several)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reraise_interrupt(exc: BaseException) -> None:
    """Re-raise what a plugin must not swallow (Ctrl-C); anything else, SystemExit
    included, is that plugin's failure: one plugin may not end every command."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _canonical(dist_name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Metareg_Foo`` is ``metareg-foo``."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _matches(info: PluginInfo, wanted: list[str]) -> bool:
    """Whether a selection switch names this plugin, by entry point or by distribution."""
    dist = _canonical(info.distribution) if info.distribution else None
    return any(w == info.name or _canonical(w) == dist for w in wanted)


CORE_DISTRIBUTION = "metareg-core"


def _selected(info: PluginInfo, only: list[str] | None, disabled: list[str] | None) -> bool:
    core = info.distribution is not None and _canonical(info.distribution) == CORE_DISTRIBUTION
    if only is not None and not core and not _matches(info, only):
        return False
    if disabled is not None and _matches(info, disabled):
        return False
    return True


def _unmatched(wanted: list[str] | None, infos: list[PluginInfo]) -> list[str]:
    return [w for w in wanted or () if not any(_matches(i, [w]) for i in infos)]


def _check_only(only: list[str] | None, infos: list[PluginInfo]) -> None:
    unknown = _unmatched(only, infos)
    if unknown:
        listing = ", ".join(sorted({f"{i.name} ({i.distribution})" if i.distribution else i.name for i in infos}))
        raise PluginError(
            f"--load-plugins / METAREG_PLUGINS names {', '.join(map(repr, unknown))}, which matches no installed "
            f"plugin, so its components would silently vanish; give entry-point or distribution names from: "
            f"{listing or '(no plugins installed)'}"
        )


def _entry_point_line(dist: Any, ep: metadata.EntryPoint) -> str:
    """Where an entry point is declared: ``entry_points.txt line N: name = value``."""
    try:
        text = dist.read_text("entry_points.txt") or ""
    except Exception:  # noqa: BLE001 - only for a message; an unreadable file just gives no line number
        text = ""
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[] ")
        elif section == ep.group and stripped.partition("=")[0].strip() == ep.name:
            return f"entry_points.txt line {number}: {stripped}"
    return f"entry point {ep.name} = {ep.value}"


def _check_value(info: PluginInfo, ep: metadata.EntryPoint) -> str | None:
    """Why an entry point's value cannot be loaded, before trying (``load()`` would fail
    with an ``AttributeError`` about ``NoneType`` that says nothing of the cause)."""
    if metadata.EntryPoint.pattern.match(ep.value):
        return None
    dist = getattr(ep, "dist", None)
    where = _entry_point_line(dist, ep) if dist is not None else f"{ep.name} = {ep.value}"
    return (
        f"invalid entry point in {info.distribution or '?'} {info.version or '?'} ({where}): the value must be "
        f"'package.module' or 'package.module:attribute'; fix the [project.entry-points.{GROUP}] table of "
        f"that distribution's pyproject.toml and reinstall it"
    )


def _owner(claimants: list[PluginInfo]) -> PluginInfo:
    """Who keeps an entry-point name that several distributions use."""
    for info in claimants:
        if info.distribution and _canonical(info.distribution) == _canonical(f"{GROUP}-{info.name}"):
            return info
    return claimants[0]


def _blame(info: PluginInfo, owner: PluginInfo) -> None:
    info.status, info.stage = STATUS_BROKEN, "register"
    suggestion = _canonical(info.distribution or "").removeprefix(f"{GROUP}-") or "another name"
    info.error = (
        f"entry-point name {info.name!r} is already used by {owner.distribution or '?'} "
        f"{owner.version or '?'}; this plugin is not loaded. Rename the entry point in "
        f"{info.distribution or 'this package'} (e.g. {suggestion!r})"
    )


def load_plugins(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    *,
    extra: Iterable[tuple[str, Any]] = (),
    strict: bool | None = None,
    only: list[str] | None = None,
    disabled: list[str] | None = None,
) -> PluginSet:
    """Load every plugin of the ``metareg`` group into a fresh plugin manager.

    ``extra`` registers ``(name, module_or_object)`` pairs directly, as a Python API
    user or a test would. ``strict``, ``only`` and ``disabled`` default to the
    environment switches described in the module docstring. A name in ``only`` that
    matches no plugin raises :class:`PluginError`.
    """
    strict = strict_from_env() if strict is None else strict
    only = _env_list("METAREG_PLUGINS") if only is None else only
    disabled = _env_list("METAREG_DISABLE_PLUGINS") if disabled is None else disabled
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)

    result = PluginSet(manager=new_manager())
    seen: set[tuple[str, str]] = set()
    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            entry_point=ep.value,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        # The same distribution found twice on sys.path: the first one is what Python imports.
        key = (_canonical(info.distribution) if info.distribution else ep.value, ep.name)
        if key in seen:
            continue
        seen.add(key)
        candidates.append((info, ep))
    for name, obj in extra:
        candidates.append((PluginInfo(name=name, entry_point=getattr(obj, "__name__", repr(obj))), obj))

    infos = [info for info, _ in candidates]
    _check_only(only, infos)
    result.unknown_disabled = _unmatched(disabled, infos)
    claimants: dict[str, list[PluginInfo]] = {}
    for info in infos:
        if _selected(info, only, disabled):
            claimants.setdefault(info.name, []).append(info)

    for info, source in candidates:
        result.plugins.append(info)
        if not _selected(info, only, disabled):
            info.status = STATUS_DISABLED
            continue
        owner = _owner(claimants[info.name])
        if owner is not info:
            _blame(info, owner)
        else:
            _load_one(result, info, source)
        if strict and info.status == STATUS_BROKEN:
            culprit = info.distribution or info.name  # a distribution name disables this plugin alone
            raise PluginError(
                f"plugin {info.label} failed at {info.stage}: {info.error}\n"
                f"Fix or uninstall {culprit}, or disable it with METAREG_DISABLE_PLUGINS={culprit} or "
                f"--disable-plugins {culprit} (strict mode is on: METAREG_STRICT / --strict)."
            )
    return result


def _fail(info: PluginInfo, stage: str, exc: BaseException, pm: pluggy.PluginManager, obj: Any = None) -> None:
    info.status, info.stage, info.error = STATUS_BROKEN, stage, _one_line(exc)
    info.traceback = "".join(traceback.format_exception(exc))  # for `metareg list --verbose`
    if obj is not None and pm.is_registered(obj):
        pm.unregister(obj)


def _load_one(result: PluginSet, info: PluginInfo, source: Any) -> None:
    pm = result.manager
    if isinstance(source, metadata.EntryPoint):
        invalid = _check_value(info, source)
        if invalid:
            info.status, info.stage, info.error = STATUS_BROKEN, "entry point", invalid
            return
    stage = "import"
    try:
        obj = source.load() if isinstance(source, metadata.EntryPoint) else source
    except BaseException as exc:  # noqa: BLE001 - any import failure marks the plugin broken
        _reraise_interrupt(exc)
        _fail(info, stage, exc, pm)
        return
    try:
        stage = "register"
        pm.register(obj, name=info.name)
        pm.check_pending()  # a misspelt hook name is reported, not ignored
    except BaseException as exc:  # noqa: BLE001 - a module __getattr__ runs plugin code here too
        _reraise_interrupt(exc)
        _fail(info, stage, exc, pm, obj)
        return

    hooks, records = [], []
    for kind in kinds.LISTED:
        hook_name, expected = kind.hook, kind.spec_type()
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not obj:
                continue
            hooks.append(hook_name)
            try:
                items = list(impl.function() or ())
                for item in items:
                    if not isinstance(item, expected):
                        raise TypeError(f"{hook_name} must yield {expected.__name__} records, got {item!r}")
                records.extend(items)
            except BaseException as exc:  # noqa: BLE001
                _reraise_interrupt(exc)
                _fail(info, hook_name, exc, pm, obj)
                return
    info.hooks = tuple(hooks)
    result.provided.extend(Provided(record, info) for record in records)


_CURRENT: PluginSet | None = None


def get_plugins() -> PluginSet:
    """The process-wide plugin set, loaded on first use (never at import time)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = load_plugins()
    return _CURRENT


def set_plugins(plugins: PluginSet | None) -> None:
    """Replace (or with ``None``, forget) the process-wide plugin set."""
    global _CURRENT
    _CURRENT = plugins
