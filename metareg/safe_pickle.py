"""Unpickling downloaded dataset files without running their code.

``pickle.load`` calls any global a file names (``os.system``, ``builtins.eval``...), so
a ``.pkl`` fetched from the internet is a program, not data. :func:`restricted_load`
resolves only the globals needed to rebuild numpy arrays, dtypes and scalars, and a
few inert builtins; dicts, lists, tuples, strings, bytes and numbers need none.
Anything else is refused with :class:`metareg.DataError` naming the global, before
anything is called. Plugins reach it as ``metareg.restricted_load``.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
import warnings
from typing import IO, Any

from metareg.errors import DataError

#: (module, name) pairs a file may reference.
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # ndarray.__reduce__
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),  # numpy scalars
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol 0-2 pickles
        # Inert types, e.g. the default factory of a pickled defaultdict(list).
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "str"),
        ("builtins", "bool"),
        ("builtins", "bytes"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
    }
)
# numpy 2 renamed numpy.core to numpy._core; files written by either must load under both.
_ALTERNATIVES = {
    "numpy.core.multiarray": ("numpy._core.multiarray",),
    "numpy._core.multiarray": ("numpy.core.multiarray",),
    "numpy.core.numeric": ("numpy._core.numeric",),
    "numpy._core.numeric": ("numpy.core.numeric",),
    "__builtin__": ("builtins",),
}


def _resolve(module: str, name: str, source: str) -> Any:
    if (module, name) not in ALLOWED:
        raise DataError(
            f"{source}: refusing to unpickle the global {module}.{name}: only numpy arrays and plain "
            "containers, strings and numbers are allowed. The file is not plain data (it may be malicious); "
            "delete it and get it from a trusted source."
        )
    for candidate in (module, *_ALTERNATIVES.get(module, ())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"{source}: {module}.{name} is allowed but cannot be imported here (is numpy installed?)")


class _Restricted(pickle.Unpickler):
    def __init__(self, file: IO[bytes], *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name, self._source)


def restricted_load(file: str | os.PathLike | IO[bytes] | bytes, *, encoding: str = "ASCII") -> Any:
    """Unpickle a path, an open binary file or bytes, allowing only numpy arrays and plain data.

    encoding: how to decode Python 2 ``str`` objects (``"latin1"`` for numpy arrays pickled by Python 2).

    Raises :class:`metareg.DataError` for a forbidden global or an unreadable file.
    """
    if isinstance(file, (bytes, bytearray)):
        fh, source, close = io.BytesIO(file), "<bytes>", True
    elif isinstance(file, (str, os.PathLike)):
        source = os.fspath(file)
        try:
            fh = open(source, "rb")
        except OSError as exc:
            raise DataError(f"{source}: cannot open ({exc.strerror or exc})") from exc
        close = True
    else:
        fh, source, close = file, getattr(file, "name", "<file>"), False
    try:
        return _Restricted(fh, source=str(source), encoding=encoding).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
        raise DataError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    finally:
        if close:
            fh.close()
