"""Shared plumbing for dataset plugins: the cache directory, checksums, downloads.

Every file this package writes goes through metareg's one way to write a file
(:func:`metareg.atomic_output`: a synced temporary file beside the destination, renamed
into place), so concurrent processes (DDP ranks generating the same cache) never see a
half-written file; the last writer wins with identical content.
Arrays are cached as ``.npz`` and always read back with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import metareg

ENV_CACHE = "METAREG_CACHE_DIR"


def cache_dir() -> Path:
    """``$METAREG_CACHE_DIR`` when set, else the user cache directory (platformdirs)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("metareg"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_npz(dest: Path, **arrays: np.ndarray) -> Path:
    """Atomically write plain (non-object) arrays as an uncompressed ``.npz``."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"refusing to cache object array {key!r}: it would need pickle")

    with metareg.atomic_output(dest) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(dest)


def load_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Read a cached ``.npz`` without pickle; ``None`` (with a warning) if missing keys or corrupt."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in required if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is regenerated
        warnings.warn(f"metareg: cache file {path} is unreadable ({type(exc).__name__}: {exc}); regenerating it",
                      RuntimeWarning, stacklevel=3)
        return None


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: dict[str, str], *, what: str) -> None:
    """Check ``path`` against ``{"sha256": hex, "md5": hex, ...}``; :class:`metareg.DataError` on mismatch."""
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got.lower() != want.lower():
            raise metareg.DataError(
                f"{what}: checksum mismatch for {path}: {algorithm} is {got}, expected {want}. "
                "The file is corrupt or not the published one; delete it and download it again."
            )


def read_checksum_file(path: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` from a ``sha256sum``-style file (``HEX  NAME`` per line)."""
    sums = {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise metareg.DataError(f"cannot read checksum file {path}: {exc}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise metareg.DataError(f"{path}:{n}: expected 'SHA256HEX  FILENAME', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def download(urls: list[str] | str, dest: Path, check: Callable[[Path], None] | None, *, what: str,
             hint: str = "", timeout: float = 60.0) -> Path:
    """Download the first URL that works to ``dest``, ``check`` it, and only then move it into place.

    ``check(tmp)`` raises :class:`metareg.DataError` when the file is not the published
    one (see :func:`verify_any`); nothing is left at ``dest`` unless the whole file
    arrived and passed. ``check=None`` skips verification: only for files whose
    digest is unknown and whose user asked for that explicitly.
    """
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    errors = []
    for url in urls:
        def write(tmp: Path, url=url) -> None:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:  # noqa: S310
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
            if check is not None:
                check(tmp)

        try:
            with metareg.atomic_output(dest) as tmp:
                write(tmp)
            return dest
        except metareg.DataError as exc:
            raise metareg.DataError(f"{exc} (downloaded from {url}; nothing was saved)") from None
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}")
    raise metareg.DataError(
        f"{what}: could not download {dest.name} (offline?). Tried: " + "; ".join(errors) + ". "
        + (hint or f"Download it by hand and put it at {dest}.")
    )


def verify_any(path: Path, alternatives: list[dict[str, str]], *, what: str) -> None:
    """Pass if ``path`` matches any one of several published digest sets."""
    errors = []
    for expected in alternatives:
        try:
            verify(path, expected, what=what)
            return
        except metareg.DataError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    wanted = "; ".join(f"{k} {v}" for e in alternatives for k, v in e.items())
    raise metareg.DataError(
        f"{what}: checksum mismatch for {path}: it matches none of the published digests ({wanted}). "
        "The file is corrupt or not the published one; delete it and download it again."
    )


def open_zip(path: Path, *, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise metareg.DataError(
            f"{what}: {path} is not a readable zip file ({exc}); delete it and get it again") from exc


def options_key(*parts) -> str:
    """A short stable hash of option values, for cache file names."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=6).hexdigest()
