"""Fault injection for tests of written files: a full disk, and destinations that are not regular files.

(Not `test_faults.py`, which kills whole runs; this module only patches writes in the test process.)
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

OLD = b"the previous, complete file\n"


def _under(fd: int, root: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
    except OSError:
        return False


class _WatchedFile:
    """A file opened for writing whose ``write`` first calls ``before(data)`` (which may raise)."""

    def __init__(self, fh, before):
        self._fh, self._before = fh, before

    def write(self, data):
        self._before(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@contextlib.contextmanager
def watched_writes(root: Path, before: Callable[[bytes], None]):
    """Call ``before(data)`` ahead of every write to a file under ``root``: by ``os.write`` or by a file
    object from ``open``, the two ways Python code writes (torch and PIL write through either)."""
    real_write, real_open = os.write, builtins.open

    def write(fd, data):
        if _under(fd, root):
            before(data)
        return real_write(fd, data)

    def open_(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) \
                and os.path.realpath(file).startswith(str(root)):
            return _WatchedFile(fh, before)
        return fh

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "write", write)
        mp.setattr(builtins, "open", open_)
        mp.setattr(io, "open", open_)  # pathlib's write_text/write_bytes open through io.open
        yield


@contextlib.contextmanager
def full_disk(root: Path, err: int = errno.ENOSPC, room: int = 100):
    """Writes under ``root`` succeed for ``room`` bytes in all, then fail with ``err``, as on a full disk."""
    left = [room]

    def before(data):
        left[0] -= len(data)
        if left[0] < 0:
            raise OSError(err, os.strerror(err))

    with watched_writes(root, before):
        yield


def make_special(kind: str, path: Path) -> Path | None:
    """Make ``path`` a symbolic link, directory, named pipe or device node; ``None`` if impossible here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        (path.parent / "real.bin").write_bytes(OLD)
        path.symlink_to("real.bin")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:  # a null device of our own: a broken writer may destroy it, never /dev/null
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except (PermissionError, OSError):
            return None
    return path
