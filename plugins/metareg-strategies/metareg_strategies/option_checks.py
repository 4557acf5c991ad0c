"""Checks of the strategies' constructor options, for callers from Python as much as from the CLI.

The CLI converts text through the factory's annotations before it calls the factory, but
``PrototypicalNetworks(distance="cosin")`` called from Python reaches the constructor as is: a
misspelt choice would silently fall into the other branch and a string such as ``"false"`` for a
flag would read as true. The choices come from the option's ``Literal`` annotation, so the
message and ``metareg info`` list the same values.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, get_args

import metareg


def _quoted(values) -> str:
    names = [repr(v) for v in values]
    return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)


def one_of(component: str, option: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of the ``Literal`` type ``choices``; otherwise an OptionError naming them."""
    allowed = get_args(choices)
    if any(value == c and isinstance(value, type(c)) for c in allowed):
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in allowed], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise metareg.OptionError(f"{component}: {option} must be {_quoted(allowed)}, got {value!r}{hint}")


def flag(component: str, option: str, value: Any) -> bool:
    """``value`` if it is a bool; anything else (a string such as ``"false"`` would read as true) is refused."""
    if isinstance(value, bool):
        return value
    raise metareg.OptionError(f"{component}: {option} must be true or false, got {value!r}")


def positive(component: str, option: str, value: Any) -> float:
    """``value`` as a float if it is a finite number above zero (NaN and infinity are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise metareg.OptionError(f"{component}: {option} must be positive and finite, got {value!r}")
    return float(value)
