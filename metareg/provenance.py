"""Where a result came from, for summary.json: device, component options, code version."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from metareg import kinds


def device(config) -> str:
    """The device the run computed on, as a person would name it (torch is loaded by then)."""
    import torch

    accel = config.accelerator
    if accel in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (devices={config.devices})"
    mps = getattr(torch.backends, "mps", None)
    if accel in ("auto", "mps") and mps is not None and mps.is_available():
        return "mps"
    return f"cpu: {platform.processor() or platform.machine()}"


def component_options(config) -> dict:
    return {k.singular: dict(getattr(config, k.options_field) or {}) for k in kinds.ALL}


def git_commit() -> dict | None:
    """The commit of the metareg code that ran, when it runs from a git checkout; None otherwise."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    # Uncommitted changes to tracked files mean the commit alone does not reproduce the result.
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes) if changes is not None else None}


def components(config, plugins) -> dict:
    """Each component as it ran: its own name (an alias typed resolves to it), the plugin that provided it, and
    every option, defaults included, so results can be grouped (``metareg table``) without the registry."""
    import json

    from metareg.build import resolve
    from metareg.errors import MetaregError
    from metareg.options import bind, describe
    from metareg.registry import Registry

    registry = Registry(plugins)
    out = {}
    for k in kinds.ALL:
        name, given = getattr(config, k.config_field), dict(getattr(config, k.options_field) or {})
        try:
            r = resolve(registry, k.plural, name, given)
            options = bind(r.factory, r.options, component=f"{k.singular} {r.name!r}", kind=k.plural)
            options = {o.name: o.default for o in describe(r.factory, kind=k.plural) if not o.required} | options
        except MetaregError:  # a dataset object built in Python has no registry entry: as it was given
            out[k.singular] = {"name": name, "plugin": None, "options": given}
            continue
        # As JSON holds them: tuples as lists, anything else as its text.
        out[k.singular] = {"name": r.name, "plugin": r.provider.qualified_name,
                           "options": json.loads(json.dumps(options, default=str))}
    return out
