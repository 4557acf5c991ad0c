"""Read pickled numpy data without running arbitrary code.

``pickle.load`` calls whatever global a file names (``os.system``, ``eval`` ...), so a
downloaded ``.pkl`` is a program, not data. :class:`RestrictedUnpickler` resolves
only the handful of globals that rebuild numpy arrays, dtypes and scalars and a few
harmless builtin containers; dicts, lists, tuples, strings and numbers need no
globals at all. Anything else is refused with :class:`metareg.DataError` naming
the global, before it is called.
"""
from __future__ import annotations

import importlib
import pickle
import warnings
from pathlib import Path

import metareg

ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # ndarray.__reduce__ (protocols 0-4) and __reduce_ex__(5)
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # numpy scalars (e.g. np.int64 indices in a list)
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # bytes in protocol 0-2 pickles written by Python 2 / 3
    ("_codecs", "encode"),
    # plain containers
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "bytearray"),
})

_RENAMES = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric",
            "__builtin__": "builtins"}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise metareg.DataError(
                f"{self.source}: refusing to unpickle global {module}.{name}: only numpy arrays, dicts, lists, "
                "strings and numbers are allowed. The file is not plain dataset data (it may be malicious); "
                "get it from a trusted source."
            )
        for mod in (_RENAMES.get(module), module):
            if mod is None:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise metareg.DataError(f"{self.source}: global {module}.{name} is allowed but not available here")


def load(path: str | Path):
    """Unpickle ``path`` allowing only numpy arrays and plain containers."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, source=str(path), encoding="latin1").load()
    except metareg.DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, OSError) as exc:
        raise metareg.DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); "
                                "delete it and get it again") from exc
