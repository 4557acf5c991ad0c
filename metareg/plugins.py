"""Finding and loading plugins from the ``metareg`` entry-point group.

Each entry point is loaded, registered and called in isolation: an import error, a
hook with a bad signature, a misspelt hook name or a hook that raises marks that
one plugin broken and records why; the others keep working. (pluggy's
``load_setuptools_entrypoints`` would let one broken plugin take everything down.)

Switches, each an environment variable and a global CLI flag:

* ``METAREG_STRICT=1`` / ``metareg --strict``: any plugin failure is an error that
  names the plugin's distribution.
* ``METAREG_PLUGINS=a,b`` / ``metareg --load-plugins a,b``: load only these plugins
  (entry-point or distribution names).
* ``METAREG_DISABLE_PLUGINS=a,b`` / ``metareg --disable-plugins a,b``: skip these.
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from metareg import hookspecs
from metareg.errors import PluginError
from metareg.records import SPEC_TYPES, ComponentSpec

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
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def _selected(info: PluginInfo, only: list[str] | None, disabled: list[str] | None) -> bool:
    names = {info.name, info.distribution or ""}
    if only is not None and not names & set(only):
        return False
    if disabled is not None and names & set(disabled):
        return False
    return True


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
    environment switches described in the module docstring.
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
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        candidates.append((info, ep))
    for name, obj in extra:
        candidates.append((PluginInfo(name=name, entry_point=getattr(obj, "__name__", repr(obj))), obj))

    for info, source in candidates:
        result.plugins.append(info)
        if not _selected(info, only, disabled):
            info.status = STATUS_DISABLED
            continue
        _load_one(result, info, source)
        if strict and info.status == STATUS_BROKEN:
            raise PluginError(
                f"plugin {info.label} failed at {info.stage}: {info.error}\n"
                f"Fix or uninstall {info.distribution or info.name}, or disable it with "
                f"METAREG_DISABLE_PLUGINS={info.name} (strict mode is on: METAREG_STRICT / --strict)."
            )
    return result


def _fail(info: PluginInfo, stage: str, exc: BaseException, pm: pluggy.PluginManager, obj: Any = None) -> None:
    info.status, info.stage, info.error = STATUS_BROKEN, stage, _one_line(exc)
    info.traceback = "".join(traceback.format_exception(exc))  # for `metareg list --verbose`
    if obj is not None and pm.is_registered(obj):
        pm.unregister(obj)


def _load_one(result: PluginSet, info: PluginInfo, source: Any) -> None:
    pm = result.manager
    stage = "import"
    try:
        obj = source.load() if isinstance(source, metadata.EntryPoint) else source
    except BaseException as exc:  # noqa: BLE001 - any import failure marks the plugin broken
        if isinstance(exc, KeyboardInterrupt):
            raise
        _fail(info, stage, exc, pm)
        return
    try:
        stage = "register"
        pm.register(obj, name=info.name)
        pm.check_pending()  # a misspelt hook name is reported, not ignored
    except Exception as exc:  # noqa: BLE001
        _fail(info, stage, exc, pm, obj)
        return

    hooks, records = [], []
    for hook_name, kind in hookspecs.HOOK_KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not obj:
                continue
            hooks.append(hook_name)
            try:
                items = list(impl.function() or ())
                for item in items:
                    expected = SPEC_TYPES[kind]
                    if not isinstance(item, expected):
                        raise TypeError(f"{hook_name} must yield {expected.__name__} records, got {item!r}")
                records.extend(items)
            except Exception as exc:  # noqa: BLE001
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
