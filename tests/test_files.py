"""metareg's one way to write a file (metareg/files.py), and every writer that must use it.

The properties are written once, as checks (`_check_*`) that raise AssertionError, and
run both on metareg's writers (they must pass) and on deliberately broken writers (they
must fail): a writer that writes in place, one that does not sync, one that renames over
whatever is there. A check that cannot fail would pass the broken writers too.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import metareg
from metareg import files
from tests.disk_faults import OLD, full_disk, make_special, watched_writes

NEW = b"new content " * 1000  # several writes' worth for the short-write test


# ---------------------------------------------------------------------------- fault injection


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to see open files")


# ---------------------------------------------------------------------------- the checks


Writer = Callable[[Path, bytes], object]


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _check_replaces(write: Writer, folder: Path) -> None:
    target = folder / "out.bin"
    target.write_bytes(OLD)
    write(target, NEW)
    assert target.read_bytes() not in (OLD, b""), "the destination was not replaced"
    assert _leftovers(folder, {"out.bin"}) == [], "a temporary file was left behind"


def _check_full_disk_keeps_previous(write: Writer, folder: Path) -> None:
    target = folder / "out.bin"
    target.write_bytes(OLD)
    with full_disk(folder):
        try:
            write(target, NEW)
        except metareg.WriteError as exc:
            assert str(target) in str(exc) and "No space left on device" in str(exc), str(exc)
        else:
            raise AssertionError("a write to a full disk reported success")
    assert target.read_bytes() == OLD, "the previous file was damaged by a failed write"
    assert _leftovers(folder, {"out.bin"}) == [], "a partial temporary file was left behind"


def _check_never_visible_half_written(write: Writer, folder: Path) -> None:
    """While the data is being written, the destination still holds the previous file."""
    target = folder / "out.bin"
    target.write_bytes(OLD)
    seen_at_target: list[bytes] = []
    with watched_writes(folder, lambda data: seen_at_target.append(target.read_bytes())):
        write(target, NEW)
    assert seen_at_target, "the writer wrote nothing"
    assert all(seen == OLD for seen in seen_at_target), "the destination was visible half-written"


def _check_synced_before_rename(write: Writer, folder: Path) -> None:
    target = folder / "out.bin"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.fspath(src)))
        return real_replace(src, dst, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        mp.setattr(os, "replace", replace)
        write(target, NEW)
    renamed = [src for kind, src in events if kind == "replace"]
    assert renamed, "the file was not written to a temporary file and renamed"
    synced_first = [path for kind, path in events[: events.index(("replace", renamed[-1]))] if kind == "fsync"]
    assert os.path.realpath(renamed[-1]) in synced_first, "the data was not synced before the rename"


def _check_refuses_special(write: Writer, folder: Path, kind: str) -> None:
    target = make_special(kind, folder / "out.bin")
    if target is None:
        pytest.skip(f"cannot create a {kind} here")
    before = os.lstat(target)
    # a reader, so that a broken writer that opens the pipe for writing does not hang the test
    reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK) if kind == "fifo" else None
    try:
        write(target, NEW)
    except metareg.WriteError as exc:
        assert str(target) in str(exc) and "regular file" in str(exc), str(exc)
    else:
        raise AssertionError(f"a {kind} at the destination was written to or replaced")
    finally:
        if reader is not None:
            os.close(reader)
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), f"the {kind} was replaced"
    if kind == "symlink":
        assert (folder / "real.bin").read_bytes() == OLD


CHECKS = {
    "replaces": _check_replaces,
    "full disk": _check_full_disk_keeps_previous,
    "never half-written": _check_never_visible_half_written,
    "synced before rename": _check_synced_before_rename,
}
SPECIAL = ("symlink", "directory", "fifo", "device")


# ---------------------------------------------------------------------------- the writers


def _atomic_write(path: Path, data: bytes):
    metareg.atomic_write(path, data)


def _atomic_output(path: Path, data: bytes):
    # the way path-based writers (PIL, onnx) use it: they write the file themselves
    with metareg.atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            files._write_all(fd, data)
        finally:
            os.close(fd)


def _checkpoint_io(path: Path, data: bytes):
    from metareg.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"blob": data}, path)


def _episodes_csv(path: Path, data: bytes):
    from metareg.evaluation import write_episodes

    n = len(data) // 10
    write_episodes(path, range(n), [0.5] * n)


def _dataset_cache(path: Path, data: bytes):
    from metareg_datasets import cache

    cache.save_npz(path, x=np.frombuffer(data, np.uint8))


def _support_cache(path: Path, data: bytes):
    import torch

    from metareg.support_cache import write_cache

    write_cache(path, "key", ["a", "b"], {"prototypes": torch.frombuffer(bytearray(data), dtype=torch.uint8)})


WRITERS = {
    "atomic_write": _atomic_write,
    "atomic_output": _atomic_output,
    "AtomicCheckpointIO": _checkpoint_io,
    "episode CSV": _episodes_csv,
    "dataset cache": _dataset_cache,
    "support cache": _support_cache,
}


@needs_proc
# numpy's savez leaves its ZipFile to the garbage collector when the disk is full
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("check", CHECKS, ids=str)
@pytest.mark.parametrize("writer", WRITERS, ids=str)
def test_every_writer_is_atomic(writer, check, tmp_path):
    CHECKS[check](WRITERS[writer], tmp_path)


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("writer", WRITERS, ids=str)
def test_every_writer_refuses_what_is_not_a_regular_file(writer, kind, tmp_path):
    _check_refuses_special(WRITERS[writer], tmp_path, kind)


def test_atomic_write_writes_exactly_the_data(tmp_path):
    _check_replaces(_atomic_write, tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == NEW


# ---------------------------------------------------------------------------- the checks fail on broken writers


def _reporting(write):
    """A broken writer that at least reports OS failures as metareg does, so the checks must catch the rest."""
    def wrapped(path: Path, data: bytes):
        try:
            write(path, data)
        except OSError as exc:
            raise metareg.WriteError(f"cannot write {path}: {exc.strerror}") from None
    return wrapped


@_reporting
def _in_place(path: Path, data: bytes):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        files._write_all(fd, data)
    finally:
        os.close(fd)


@_reporting
def _rename_without_sync(path: Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        files._write_all(fd, data)
    except OSError:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)


@_reporting
def _rename_over_anything(path: Path, data: bytes):
    """Temp file, sync, rename, but no look at what the destination is (safetensors' own writer did this)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        files._write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.is_dir() and not path.is_symlink():
        os.rmdir(path)
    os.replace(tmp, path)


@_reporting
def _leaves_temp_on_failure(path: Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        files._write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


BROKEN = {  # writer -> the checks it must fail
    "in place": (_in_place, ["full disk", "never half-written", "synced before rename", "symlink", "fifo",
                             "device"]),
    "no sync": (_rename_without_sync, ["synced before rename"]),
    "renames over anything": (_rename_over_anything, ["symlink", "directory", "device"]),
    "leaves its temp file": (_leaves_temp_on_failure, ["full disk"]),
}


def _can_make(kind: str, folder: Path) -> bool:
    probe = folder / "probe"
    try:
        return make_special(kind, probe) is not None
    finally:
        if probe.is_dir() and not probe.is_symlink():
            probe.rmdir()
        else:
            probe.unlink(missing_ok=True)
        (folder / "real.bin").unlink(missing_ok=True)


@needs_proc
@pytest.mark.parametrize("broken", BROKEN, ids=str)
def test_checks_fail_on_broken_writers(broken, tmp_path):
    write, must_fail = BROKEN[broken]
    for name in must_fail:
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        if name in SPECIAL:
            if not _can_make(name, folder):
                continue
            with pytest.raises(AssertionError):
                _check_refuses_special(write, folder, name)
        else:
            with pytest.raises(AssertionError):
                CHECKS[name](write, folder)


# ---------------------------------------------------------------------------- details of metareg.files


def test_new_files_get_ordinary_permissions_and_existing_ones_keep_theirs(tmp_path):
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(metareg.atomic_write(tmp_path / "a.txt", "x").stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(metareg.atomic_write(tmp_path / "b.txt", "x").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    (tmp_path / "a.txt").chmod(0o600)
    metareg.atomic_write(tmp_path / "a.txt", "y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600


def test_text_is_utf8_and_parent_folders_are_created(tmp_path):
    path = metareg.atomic_write(tmp_path / "deep" / "er" / "t.txt", "größe ✓\n")
    assert path.read_bytes() == "größe ✓\n".encode()


def test_short_writes_are_completed(tmp_path):
    real = os.write

    def short(fd, data):
        return real(fd, bytes(memoryview(data)[:7]))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "write", short)
        metareg.atomic_write(tmp_path / "s.bin", NEW)
    assert (tmp_path / "s.bin").read_bytes() == NEW


@pytest.mark.parametrize(("where", "err"), [("write", errno.ENOSPC), ("write", errno.EDQUOT),
                                            ("fsync", errno.EIO), ("replace", errno.EACCES),
                                            ("mkstemp", errno.EACCES), ("mkstemp", errno.EROFS)])
def test_os_failures_become_write_errors_naming_path_and_reason(tmp_path, where, err):
    target = tmp_path / "out.txt"
    target.write_bytes(OLD)

    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    with pytest.MonkeyPatch.context() as mp:
        if where == "mkstemp":
            mp.setattr(tempfile, "mkstemp", fail)
        else:
            mp.setattr(os, where, fail)
        with pytest.raises(metareg.WriteError) as info:
            metareg.atomic_write(target, NEW)
    assert str(target) in str(info.value) and os.strerror(err) in str(info.value)
    assert "previous file is unchanged" in str(info.value)
    assert target.read_bytes() == OLD and _leftovers(tmp_path, {"out.txt"}) == []


def test_a_new_file_that_fails_leaves_nothing(tmp_path):
    with full_disk(tmp_path, room=0), pytest.raises(metareg.WriteError, match="nothing was written"):
        metareg.atomic_write(tmp_path / "new.txt", NEW)
    assert list(tmp_path.iterdir()) == []


def test_block_errors_remove_the_temporary_file_and_keep_their_type(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(OLD)
    with pytest.raises(ValueError, match="boom"), metareg.atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("boom")
    # an input the block could not read is not a write failure
    with pytest.raises(FileNotFoundError), metareg.atomic_output(target):
        open(tmp_path / "missing-input")  # noqa: SIM115
    with pytest.raises(metareg.WriteError, match="Read-only file system"), metareg.atomic_output(target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert target.read_bytes() == OLD and _leftovers(tmp_path, {"out.txt"}) == []


def test_output_that_is_an_input_is_refused(tmp_path):
    source = tmp_path / "in.ckpt"
    source.write_bytes(OLD)
    (tmp_path / "sub").mkdir()
    os.link(source, tmp_path / "hard.ckpt")
    for same in (source, tmp_path / "sub" / ".." / "in.ckpt", tmp_path / "hard.ckpt"):
        with pytest.raises(metareg.WriteError, match="it is the input"):
            metareg.atomic_write(same, NEW, inputs=(source,))
    assert source.read_bytes() == OLD
    files.refuse_same_file(tmp_path / "other.ckpt", source, None)  # a different file is fine
    metareg.atomic_write(tmp_path / "other.ckpt", NEW, inputs=(source,))


def test_write_error_is_a_metareg_error_the_cli_reports():
    assert issubclass(metareg.WriteError, metareg.MetaregError)
    assert not issubclass(metareg.WriteError, OSError)  # download retries catch OSError; a full disk is final


# ---------------------------------------------------------------------------- several files: all or none


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "pkg"
    old = os.umask(0o022)
    try:
        with metareg.files.atomic_directory(target) as staging:
            (staging / "a.txt").write_text("a")
            assert not target.exists()  # nothing visible until the block is done
    finally:
        os.umask(old)
    assert (target / "a.txt").read_text() == "a" and stat.S_IMODE(target.stat().st_mode) == 0o755
    with pytest.raises(metareg.WriteError, match="already exists"), metareg.files.atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), metareg.files.atomic_directory(tmp_path / "other") as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_new_plugin_on_a_full_disk_leaves_no_half_package(tmp_path):
    from click.testing import CliRunner

    from metareg.cli import cli

    with full_disk(tmp_path, room=2000):
        result = CliRunner().invoke(cli, ["new-plugin", "demo", "--output", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"cannot write {str(tmp_path / 'metareg-demo')!r}: No space left on device" in result.output
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(cli, ["new-plugin", "demo", "--output", str(tmp_path)])
    assert result.exit_code == 0 and (tmp_path / "metareg-demo" / "pyproject.toml").is_file()


# ---------------------------------------------------------------------------- killed mid-write


def _killed_while_writing(target: Path, data: bytes, at_byte: int | None, at_call: str | None) -> int:
    """Fork; the child writes ``data`` to ``target`` and SIGKILLs itself at the given moment. Its wait status."""
    import signal

    pid = os.fork()
    if pid == 0:  # the child: no pytest clean-up, no return
        try:
            real_write = os.write
            done = [0]

            def write(fd, chunk):
                n = real_write(fd, bytes(memoryview(chunk)[:4096]))  # small writes: many moments to die in
                done[0] += n
                if at_byte is not None and done[0] >= at_byte:
                    os.kill(os.getpid(), signal.SIGKILL)
                return n

            def dying(name):
                real = getattr(os, name)

                def call(*args, **kwargs):
                    os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)
                return call

            os.write = write
            if at_call:
                setattr(os, at_call, dying(at_call))
            metareg.atomic_write(target, data)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@needs_proc
def test_a_write_killed_at_any_moment_leaves_the_previous_or_the_new_file(tmp_path):
    """SIGKILL at 20 seeded random moments of the write, and before the sync and the rename."""
    import random
    import signal

    rng = random.Random(13)
    data = bytes(rng.randrange(256) for _ in range(200_000))
    moments = [(rng.randrange(1, len(data)), None) for _ in range(20)] + [(None, "fsync"), (None, "replace")]
    target = tmp_path / "model.onnx"
    for at_byte, at_call in moments:
        target.write_bytes(OLD)
        status = _killed_while_writing(target, data, at_byte, at_call)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (at_byte, at_call, status)
        assert target.read_bytes() == OLD, f"killed at byte {at_byte} / in {at_call}: the previous file changed"
        # only hidden temporary files remain beside it, and the next write works
        assert all(p.name.startswith(".model.onnx.") and p.name.endswith(".tmp")
                   for p in tmp_path.iterdir() if p != target)
        metareg.atomic_write(target, data)
        assert target.read_bytes() == data
