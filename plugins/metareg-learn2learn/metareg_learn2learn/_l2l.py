"""Importing learn2learn, and making every pickle it reads go through metareg's restricted loader."""
from __future__ import annotations

import contextlib
import io
import pickle
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import metareg
from metareg_learn2learn.install import INSTALL_HINT


def learn2learn() -> ModuleType:
    """``import learn2learn``, without gym's deprecation banner on stderr; a clear error if it fails."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import learn2learn as l2l
    except ImportError as exc:
        raise ImportError(f"learn2learn cannot be imported ({exc}): {INSTALL_HINT}") from exc
    return l2l


class _Unpickler:
    """Stands in for ``pickle._Unpickler`` (fc100 sets ``encoding`` after construction)."""

    def __init__(self, file: Any, *, encoding: str = "ASCII", **_: Any):
        self.file, self.encoding = file, encoding

    def load(self) -> Any:
        return metareg.restricted_load(self.file, encoding=self.encoding)


class RestrictedPickle:
    """A stand-in for the ``pickle`` module inside learn2learn's dataset modules.

    Loading goes through :func:`metareg.restricted_load` (numpy arrays and plain data
    only); writing (learn2learn's own bookkeeping caches) is unchanged.
    """

    UnpicklingError = pickle.UnpicklingError
    PicklingError = pickle.PicklingError
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)
    Unpickler = _Unpickler
    _Unpickler = _Unpickler

    @staticmethod
    def load(file: Any, *, encoding: str = "ASCII", **_: Any) -> Any:
        return metareg.restricted_load(file, encoding=encoding)

    @staticmethod
    def loads(data: bytes, *, encoding: str = "ASCII", **_: Any) -> Any:
        return metareg.restricted_load(data, encoding=encoding)


_LOCK = threading.RLock()


@contextlib.contextmanager
def restricted_pickle(*modules: ModuleType) -> Iterator[None]:
    """Replace ``pickle`` in each module with :class:`RestrictedPickle` while the block runs."""
    with _LOCK:
        saved = [(m, m.__dict__.get("pickle")) for m in modules]
        for m, _ in saved:
            m.pickle = RestrictedPickle
        try:
            yield
        finally:
            for m, original in saved:
                if original is None:
                    del m.pickle
                else:
                    m.pickle = original
