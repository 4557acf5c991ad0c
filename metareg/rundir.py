"""A run directory is claimed, not assumed.

``metareg run`` and ``metareg eval`` write only into a directory they create, an empty
one, or one marked as a metareg directory of the same kind (the ``.metareg-run`` marker,
JSON ``{"kind": "run" | "eval", ...}``). Anything else, a user's folder, a file, another
kind of metareg result, is refused before anything is written.

While a run lives it holds an exclusive ``flock`` on ``.metareg-lock`` inside the
directory, so a second run on it stops at once and is told who holds it. The lock file
records the holder's pid, host and start time for that message only: the lock itself is
the kernel's, released when the holder's process ends however it ends (a killed run
leaves no stale lock to clear by hand).

Lightning's ``ddp`` launcher re-executes the command line in each further process, and a
cluster launcher (torchrun, srun) or another node runs the same command line; those
processes write into the directory the job's first process claimed and never take the lock
themselves (it would be refused: the first process holds it).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from metareg.errors import ConfigError
from metareg.files import atomic_write

MARKER = ".metareg-run"
LOCK = ".metareg-lock"
KINDS = ("run", "eval")


class RunDirBusy(ConfigError):
    """Another process holds the run directory."""


@dataclass(frozen=True)
class Contents:
    """What a directory holds, as far as claiming it is concerned."""

    path: Path
    exists: bool
    kind: str | None  # the marker's kind; None when unmarked
    empty: bool  # nothing in it but possibly a lock file
    has_last: bool  # checkpoints/last.ckpt
    finished: bool  # summary.json

    @classmethod
    def of(cls, path: Path) -> Contents:
        if not path.exists():
            return cls(path, False, None, True, False, False)
        if not path.is_dir():
            raise ConfigError(
                f"--output-dir {str(path)!r} is a file, not a directory; name a new or empty directory"
            )
        names = {p.name for p in path.iterdir()} - {LOCK}
        return cls(path, True, read_marker(path), not names, (path / "checkpoints" / "last.ckpt").is_file(),
                   (path / "summary.json").is_file())

    @property
    def legacy_run(self) -> bool:
        # A run written before directories were marked: its config and checkpoint say what it is.
        return self.kind is None and self.has_last and (self.path / "config.yaml").is_file()


def launched_worker() -> bool:
    """True in any process of a distributed job but its first (started by Lightning's ddp launcher, by
    torchrun or srun, or on another node): it works under the first process's claim."""
    from metareg.hardware import first_process

    return not first_process()


def read_marker(path: Path) -> str | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if kind in KINDS else None


def check(path: str | os.PathLike, kind: str, *, resume: bool = False, _locked: bool = False) -> Contents:
    """Refuse a directory that ``kind`` may not write into; read-only, safe to call before any work.

    Returns what the directory holds. Called again under the lock by :meth:`RunDir.claim`.
    """
    assert kind in KINDS
    path = Path(path)
    c = Contents.of(path)
    if c.exists and not _locked:
        _refuse_if_held(path)  # whatever it holds, a live run on it is the reason to give
    where = str(path)
    if resume:
        if not (c.kind == "run" or c.legacy_run):
            raise ConfigError(f"cannot resume: {where!r} holds no metareg run; start the run without --resume")
        return c
    if c.empty:
        return c
    if c.kind is None:
        if c.legacy_run and kind == "run":
            raise ConfigError(f"{where!r} already holds a run; pass --resume to continue it or choose another "
                              "--output-dir (nothing was overwritten)")
        raise ConfigError(
            f"{where!r} is not empty and is not a metareg {kind} directory; metareg writes only into a new or empty "
            "directory or one of its own: choose another --output-dir (nothing was touched)"
        )
    if c.kind != kind:
        raise ConfigError(
            f"{where!r} is a metareg {c.kind} directory; `metareg {kind}` does not write into it: choose another "
            "--output-dir"
            + (" (eval writes its results in a sub-directory of its own)" if kind == "eval" else "")
        )
    if kind == "run":
        if not c.has_last and not (path / "config.yaml").exists():
            return c  # claimed, then stopped before it wrote anything: nothing here to lose
        if c.has_last:
            raise ConfigError(f"{where!r} already holds a run; pass --resume to continue it or choose another "
                              "--output-dir (nothing was overwritten)")
        raise ConfigError(
            f"{where!r} holds a metareg run that saved no checkpoint (it stopped before its first epoch ended); "
            "pass --resume to start it again from its config.yaml, or choose another --output-dir"
        )
    if c.finished:
        raise ConfigError(f"{where!r} already holds results; choose another --output-dir")
    return c  # an evaluation that did not finish: it is redone from scratch


def holder(path: str | os.PathLike) -> dict | None:
    """Who holds (or last held) the directory's lock, as the holder recorded it."""
    try:
        data = json.loads((Path(path) / LOCK).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not recorded its process id yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"metareg process {info.get('pid')} on host {info.get('host')} (since {since})"


def _busy(path: Path) -> RunDirBusy:
    return RunDirBusy(
        f"{str(path)!r} is in use by {_describe(holder(path))}; wait for it to end or choose another --output-dir"
    )


def is_held(path: Path) -> bool:
    """True while a live process holds ``path``'s lock (the kernel's flock, tried without blocking)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _refuse_if_held(path: Path) -> None:
    if is_held(path):
        raise _busy(path)


def _remove_stale_temporaries(path: Path) -> None:
    # Temporary files of metareg.files' atomic writes, left by a process that was killed mid-write. Only the
    # lock holder writes here, so none of them is in use.
    for directory in (path, path / "checkpoints"):
        for tmp in directory.glob(".*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)


class RunDir:
    """A claimed run directory: the lock is held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, kind: str, fd: int | None, contents: Contents):
        self.path, self.kind, self._fd, self.contents = path, kind, fd, contents

    @classmethod
    def claim(cls, path: str | os.PathLike, kind: str, *, resume: bool = False) -> RunDir:
        """Create (if needed), lock, check and mark ``path``; raise :class:`RunDirBusy` if it is held."""
        path = Path(path)
        check(path, kind, resume=resume)  # a directory that is not ours is refused before it is touched
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create the {kind} directory {str(path)!r}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(path) from None
        try:
            contents = check(path, kind, resume=resume, _locked=True)  # again, now that nobody else can change it
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "kind": kind}
            # In place, not renamed: the lock belongs to this file's inode.
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            _remove_stale_temporaries(path)
            if read_marker(path) != kind:
                import metareg

                atomic_write(path / MARKER, json.dumps({"kind": kind, "metareg_version": metareg.__version__}) + "\n")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, kind, fd, contents)

    @classmethod
    def joined(cls, path: str | os.PathLike, kind: str) -> RunDir:
        """The directory as a process launched by the claiming one sees it: no lock of its own."""
        path = Path(path)
        return cls(path, kind, None, Contents.of(path))

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # nobody holds it now
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()


def unique(path: Path) -> Path:
    """``path``, or ``path~2``, ``path~3``... : the first name not taken yet."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}~{n}")
    return candidate
