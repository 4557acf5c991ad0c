"""The one way metareg writes a file.

Every file metareg writes (summaries, CSVs, checkpoints, exports, predictions, caches)
goes to a temporary file in the destination's directory, is flushed and synced, and
only then renamed onto the destination. A reader, a crash or a full disk therefore
sees either the previous file or the complete new one, never a mixture.

The rename replaces only regular files: a symbolic link, a directory or a device node
at the destination is refused, since renaming over it would silently turn a link into
a copy or replace ``/dev/something``. An output that is one of the command's inputs is
refused before anything is written. Failures of the operating system (full disk,
permissions, read-only file system) become :class:`~metareg.errors.WriteError`, which
names the path and the reason; the temporary file is removed and the previous file is
left as it was.

This module is imported by ``import metareg``: it must stay free of torch.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from metareg.errors import WriteError

__all__ = ["atomic_directory", "atomic_output", "atomic_write", "check_output", "check_target", "refuse_same_file"]

# Errors raised inside an `atomic_output` block that mean "the file could not be written", as
# opposed to, say, a missing input or a network error of a download the block was reading.
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO")
    if hasattr(errno, name)
)

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_target(path: str | os.PathLike) -> Path:
    """Refuse a destination that exists and is not a regular file (checked without following links)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise WriteError(f"cannot write {str(path)!r}: {_reason(exc)}") from None
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    if stat.S_ISLNK(mode):  # replacing the link would turn it into a copy; its target may be what was meant
        kind += f" (to {os.readlink(path)!r}; pass that path to replace the file it points to)"
    raise WriteError(
        f"refusing to write {str(path)!r}: it is {kind}, and metareg only replaces regular files; "
        "choose another output path"
    )


def refuse_same_file(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Raise :class:`WriteError` when ``output`` is one of ``inputs`` (same file, by any path)."""
    out = Path(output)
    for source in inputs:
        if source is None:
            continue
        same = os.path.realpath(out) == os.path.realpath(source)
        if not same and out.exists() and Path(source).exists():
            try:
                same = os.path.samefile(out, source)
            except OSError:
                same = False
        if same:
            raise WriteError(
                f"refusing to write {str(out)!r}: it is the input {str(source)!r}, which writing would destroy; "
                "choose another output path"
            )


def check_output(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """What a command checks of each output before any work: not an input, not a link, device or folder."""
    refuse_same_file(output, *inputs)
    return check_target(output)


def _umask() -> int:
    umask = os.umask(0)  # the only portable way to read it
    os.umask(umask)
    return umask


def _new_mode(path: Path) -> int:
    """An existing file keeps its permissions; a new one gets the umask's (mkstemp's 0600 is for secrets)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems cannot open or sync a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _failure(path: Path, exc: OSError) -> WriteError:
    previous = "the previous file is unchanged" if path.is_file() else "nothing was written"
    return WriteError(f"cannot write {str(path)!r}: {_reason(exc)} ({previous})")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed onto ``path``.

    For writers that want a file name (``torch.onnx.export``, ``PIL.Image.save``)::

        with atomic_output("model.onnx", inputs=[checkpoint]) as tmp:
            torch.onnx.export(module, example, tmp)

    Anything raised inside the block removes the temporary file and leaves ``path`` as it
    was; an ``OSError`` of writing becomes :class:`WriteError`.
    """
    path = check_output(path, *inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _failure(path, exc) from None
    tmp = Path(name)
    try:
        with _reported_as_write_errors(path):
            yield tmp
        try:
            os.chmod(tmp, _new_mode(path))
            _sync(name)
            check_target(path)  # something may have appeared there while the block wrote
            os.replace(tmp, path)
        except OSError as exc:
            raise _failure(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _sync_dir(path.parent)


@contextlib.contextmanager
def _reported_as_write_errors(path: Path) -> Iterator[None]:
    """A full disk, a permission or a read-only error inside the caller's block becomes one WriteError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise _failure(path, exc) from None
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # a zero-length write on a full device: report it as what it is
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def atomic_write(path: str | os.PathLike, data: str | bytes | bytearray | memoryview, *,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; return ``path``.

    ``inputs``: files the command read, which ``path`` must not be (see :func:`refuse_same_file`).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else memoryview(data)  # bytes-like: no copy
    with atomic_output(path, inputs=inputs) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, payload)
        finally:
            os.close(fd)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside ``path`` that becomes ``path`` (which must not exist) on success.

    For outputs made of several files (a plugin scaffold): either all of them appear, or none.
    """
    path = Path(path)
    if os.path.lexists(path):
        raise WriteError(f"refusing to write {str(path)!r}: it already exists; choose another name or remove it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _failure(path, exc) from None
    try:
        with _reported_as_write_errors(path):
            yield staging
        if os.path.lexists(path):  # renaming onto an empty directory would silently replace it
            raise WriteError(f"refusing to write {str(path)!r}: it appeared while it was being written")
        try:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is for secrets
            os.rename(staging, path)
        except OSError as exc:
            raise _failure(path, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _sync_dir(path.parent)
