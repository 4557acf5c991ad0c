"""What every contract check does first and last: find the component, build it as a run would, say what broke."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from metareg import kinds


def resolve_with_options(kind: str, factory_or_name: str | Callable) -> tuple[Callable, str, dict[str, Any]]:
    """The factory, a label for messages, and the test-sized options a registered record declares."""
    singular = kinds.get(kind).singular
    if isinstance(factory_or_name, str):
        from metareg.registry import Registry

        entry = Registry.current().get(kind, factory_or_name)
        return entry.record.load(), f"{singular} {entry.record.name!r}", dict(entry.record.test_options)
    if not callable(factory_or_name):
        raise TypeError(f"expected a registered name or a factory, got {factory_or_name!r}")
    name = getattr(factory_or_name, "__qualname__", repr(factory_or_name))
    return factory_or_name, f"{singular} {name}", {}


def build(factory: Callable, label: str, options: dict[str, Any] | None, kind: str, **injected: Any) -> Any:
    """Call ``factory`` as ``metareg run`` would: options validated for ``kind``, dataset values injected."""
    from metareg.options import bind

    kwargs = bind(factory, dict(options or {}), component=label, injected=injected, kind=kind)
    return factory(**kwargs)


def require(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise AssertionError(f"{label}: {message}")


def call(label: str, what: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the step that failed
        raise AssertionError(f"{label}: {what} failed: {type(exc).__name__}: {exc}") from exc


def grad_report(params: Iterable[tuple[str, nn.Parameter]]) -> tuple[int, int, list[str]]:
    """(parameters with a non-zero finite gradient, trainable parameters, names with non-finite gradients)."""
    reached, total, bad = 0, 0, []
    for name, p in params:
        if not p.requires_grad:
            continue
        total += 1
        if p.grad is None:
            continue
        if not torch.isfinite(p.grad).all():
            bad.append(name)
        elif p.grad.abs().sum() > 0:
            reached += 1
    return reached, total, bad
