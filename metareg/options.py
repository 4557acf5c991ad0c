"""A component's options, read from its factory's signature and docstring.

Factories take explicit keyword arguments with defaults and annotations; their
docstring documents each one as ``name: help`` (a Google-style ``Args:`` section
works too). This module turns that into :class:`Option` records for
``metareg info``, converts ``key=value`` text from the command line, and refuses
unknown or mistyped options with a suggestion.
"""
from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from metareg import kinds, legacy_names
from metareg.errors import OptionError

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    type: Any
    default: Any
    help: str = ""
    required: bool = False

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    def as_dict(self) -> dict[str, Any]:
        default = None if self.required else self.default
        if isinstance(default, tuple):
            default = list(default)
        return {
            "name": self.name,
            "type": self.type_name,
            "default": default,
            "required": self.required,
            "help": self.help,
        }


def type_name(tp: Any) -> str:
    if tp is _MISSING or tp is Any:
        return "any"
    if isinstance(tp, str):
        return tp
    origin = get_origin(tp)
    if origin is Literal:
        return "{" + "|".join(str(a) for a in get_args(tp)) + "}"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " | ".join(type_name(a) for a in args)
        return f"{inner} | None" if len(args) < len(get_args(tp)) else inner
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list[{type_name(args[0])}]" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _target(factory: Callable) -> Callable:
    return factory.__init__ if inspect.isclass(factory) else factory


def summary(factory: Callable) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ") if doc else ""


def _param_help(factory: Callable) -> dict[str, str]:
    doc = inspect.getdoc(factory) or ""
    if inspect.isclass(factory):
        doc += "\n" + (inspect.getdoc(factory.__init__) or "")
    helps: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        m = re.match(r"^\s*(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$", line)
        if m and m.group(1) not in ("Args", "Arguments", "Returns", "Raises", "Example", "Examples", "Note"):
            current = m.group(1)
            helps[current] = m.group(2).strip()
        elif current and line.strip() and line.startswith((" ", "\t")):
            helps[current] = (helps[current] + " " + line.strip()).strip()
        else:
            current = None
    return helps


def describe(factory: Callable, *, kind: str | kinds.Kind | None = None) -> list[Option]:
    """The user-settable options of ``factory``, in signature order.

    ``kind`` is the kind of the record the factory comes from: the keyword arguments the core
    fills in for that kind (:attr:`metareg.kinds.Kind.injected`, e.g. a backbone's ``channels``)
    are not options. A dataset's are: its ``image_size`` is the user's to set. Without a kind,
    every keyword argument is an option.
    """
    hide = kinds.get(kind).injected if kind is not None else ()
    target = _target(factory)
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolved forward references: fall back to text
        hints = {}
    helps = _param_help(factory)
    options = []
    for p in sig.parameters.values():
        if p.name in ("self", *hide) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = hints.get(p.name, p.annotation)
        if tp is _MISSING and p.default is not _MISSING and p.default is not None:
            tp = type(p.default)
        options.append(Option(p.name, tp, p.default, helps.get(p.name, ""), required=p.default is _MISSING))
    return options


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (text from the CLI or a YAML value) to type ``tp``."""
    if tp is _MISSING or tp is Any or isinstance(tp, str):
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value):
                return c
        raise OptionError(f"option {name!r}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, name)
            except OptionError as e:
                errors.append(str(e))
        raise OptionError(errors[0] if errors else f"option {name!r}: bad value {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis] or [Any]
        items = value
        if isinstance(value, str):
            items = [v for v in (s.strip() for s in value.strip("[]()").split(",")) if v]
        if not isinstance(items, (list, tuple)):
            items = [items]
        converted = [_convert(v, args[0] if len(args) == 1 else args[i], name) for i, v in enumerate(items)]
        return tuple(converted) if (origin or tp) is tuple else converted
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"option {name!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise OptionError(f"option {name!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise OptionError(f"option {name!r}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise OptionError(f"option {name!r}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    try:
        return tp(value)
    except Exception:  # noqa: BLE001
        raise OptionError(f"option {name!r}: cannot convert {value!r} to {type_name(tp)}") from None


def parse_assignments(pairs: typing.Iterable[str], what: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``, refusing malformed items."""
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def bind(factory: Callable, given: dict[str, Any], *, component: str, injected: dict[str, Any] | None = None,
         kind: str | kinds.Kind | None = None):
    """Validate and convert ``given`` against ``factory``'s options (see :func:`describe` for ``kind``).

    Returns the keyword arguments to call ``factory`` with (defaults filled in,
    ``injected`` values added where the factory accepts them).
    """
    options = {o.name: o for o in describe(factory, kind=kind)}
    given = legacy_names.rename(given, set(options), legacy_names.OPTIONS, component, OptionError)
    unknown = [k for k in given if k not in options]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(options), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = ", ".join(options) or "(it takes none)"
        raise OptionError(f"{component}: unknown option {k!r}.{hint} Valid options: {valid}.")
    kwargs = {}
    for name, opt in options.items():
        if name in given:
            kwargs[name] = _convert(given[name], opt.type, f"{component}.{name}")
        elif opt.required:
            raise OptionError(f"{component}: option {name!r} is required ({opt.help or opt.type_name}).")
    params = inspect.signature(_target(factory)).parameters
    for name, value in (injected or {}).items():
        if name in params:
            kwargs[name] = value
    return kwargs
