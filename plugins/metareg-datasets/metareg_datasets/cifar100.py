"""Reading CIFAR-100 (Krizhevsky 2009) from its official archives, for ``cifarfs`` and ``fc100``.

Two official versions are read, archive or extracted folder:

``binary`` (preferred): ``cifar-100-binary.tar.gz`` / ``cifar-100-binary/`` with
``train.bin`` and ``test.bin``: fixed 3,074-byte records (coarse label byte, fine label
byte, 1,024 red, 1,024 green, 1,024 blue bytes, rows top to bottom). Raw bytes, no
pickle: nothing in the file is ever executed, and the pixels are already in the
``(C, H, W)`` layout metareg serves.

``python``: ``cifar-100-python.tar.gz`` / ``cifar-100-python/`` with the pickled dicts
``train``, ``test`` and ``meta`` (what torchvision downloads). They are read with
:func:`metareg.restricted_load`, which refuses every global but numpy's array
rebuilders, so a tampered file cannot run code.

Archives are checked against the MD5 the CIFAR page publishes before anything is
read; the extracted python files against torchvision's per-file MD5s. No per-file
digest of the extracted binary files is published, so those are checked for their
record structure and label names only (``info.note`` says so).
"""
from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import metareg
from metareg_datasets import cache
from metareg_datasets.cifar_splits import COARSE_NAMES, FINE_NAMES

# Archive name, folder inside it, URL, and digest. The MD5s are the ones published on
# https://www.cs.toronto.edu/~kriz/cifar.html (the python one is also torchvision's
# CIFAR100.tgz_md5, torchvision/datasets/cifar.py).
ARCHIVES: dict[str, dict] = {
    "binary": {"file": "cifar-100-binary.tar.gz", "folder": "cifar-100-binary",
               "url": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
               "digest": {"md5": "03b5dce01913d631647c71ecec9e9cb8"}},
    "python": {"file": "cifar-100-python.tar.gz", "folder": "cifar-100-python",
               "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
               "digest": {"md5": "eb9058c3a382ffc7106e4002c42a8d85"}},
}
# Members of each version. Extracted python files: torchvision's CIFAR100.train_list,
# test_list and meta["md5"] (torchvision/datasets/cifar.py).
MEMBERS: dict[str, dict[str, dict[str, str] | None]] = {
    "binary": {"train.bin": None, "test.bin": None, "fine_label_names.txt": None, "coarse_label_names.txt": None},
    "python": {"train": {"md5": "16019d7e3df5f24257cddd939b257f8d"},
               "test": {"md5": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
               "meta": {"md5": "7973b15100ade9c7d40fb424638fde48"}},
}
RECORD = 2 + 3 * 32 * 32
PER_CLASS = 600  # 500 training + 100 test images of every class


@dataclass
class Cifar100:
    """All 60,000 images (training set then test set) as ``uint8 (N, 3, 32, 32)``, fine and coarse ids."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray
    source: Path
    version: str
    verified: bool


def find(base: Path, versions=("binary", "python")) -> tuple[str, Path] | None:
    """The first of ``versions`` present under ``base`` (or ``base`` itself): archives before folders."""
    for version in versions:
        spec = ARCHIVES[version]
        if base.is_file() and base.name == spec["file"]:
            return version, base
        if (base / spec["file"]).is_file():
            return version, base / spec["file"]
    for version in versions:
        for folder in (base / ARCHIVES[version]["folder"], base):
            if all((folder / m).is_file() for m in MEMBERS[version]):
                return version, folder
    return None


def fetch(base: Path, what: str) -> Path:
    """Download the binary archive into ``base``, MD5-verified before it is moved into place."""
    spec = ARCHIVES["binary"]
    base.mkdir(parents=True, exist_ok=True)
    return cache.download(
        spec["url"], base / spec["file"], lambda tmp: cache.verify(tmp, spec["digest"], what=what), what=what,
        hint=f"Download {spec['url']} by hand and put it in {base}, or pass root=FOLDER that holds it.")


def _member_reader(version: str, path: Path, what: str) -> tuple[Callable[[str], bytes], Callable[[], None]]:
    folder = ARCHIVES[version]["folder"]
    if path.is_dir():
        def read_file(name: str) -> bytes:
            digest = MEMBERS[version][name]
            if digest is not None:
                cache.verify(path / name, digest, what=what)
            return (path / name).read_bytes()

        return read_file, lambda: None
    cache.verify(path, ARCHIVES[version]["digest"], what=what)
    # One sequential pass: seeking back in a gzip stream would decompress it again for every member.
    wanted = {f"{folder}/{name}": name for name in MEMBERS[version]}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    members[wanted[info.name]] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise metareg.DataError(f"{what}: {path} is damaged or not a .tar.gz ({type(exc).__name__}: {exc}); "
                                "delete it and get it again") from None

    def read_member(name: str) -> bytes:
        if name not in members:
            raise metareg.DataError(f"{what}: {path} has no member {folder}/{name}; it is not the official "
                                    f"{ARCHIVES[version]['file']}")
        return members[name]

    return read_member, members.clear


def _names(text: bytes, expected: tuple[str, ...], where: str, what: str) -> None:
    names = tuple(line.strip() for line in text.decode("ascii", "replace").splitlines() if line.strip())
    if names != expected:
        raise metareg.DataError(f"{what}: {where} does not list CIFAR-100's {len(expected)} label names "
                                f"(got {len(names)}, e.g. {names[:3]}); it is not CIFAR-100")


def _read_binary(read: Callable[[str], bytes], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _names(read("fine_label_names.txt"), FINE_NAMES, "fine_label_names.txt", what)
    _names(read("coarse_label_names.txt"), COARSE_NAMES, "coarse_label_names.txt", what)
    parts = []
    for name in ("train.bin", "test.bin"):
        raw = read(name)
        if not raw or len(raw) % RECORD:
            raise metareg.DataError(f"{what}: {name} holds {len(raw)} bytes, not whole {RECORD}-byte records; "
                                    "the file is damaged: get the archive again")
        parts.append(np.frombuffer(raw, np.uint8).reshape(-1, RECORD))
    records = np.concatenate(parts)
    images = records[:, 2:].reshape(-1, 3, 32, 32)
    return images, records[:, 1].astype(np.int64), records[:, 0].astype(np.int64)


def _read_python(read: Callable[[str], bytes], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    meta = metareg.restricted_load(read("meta"), encoding="latin1")
    if not isinstance(meta, dict) or tuple(meta.get("fine_label_names", ())) != FINE_NAMES:
        raise metareg.DataError(f"{what}: the archive's meta does not list CIFAR-100's 100 fine label names")
    images, fine, coarse = [], [], []
    for name in ("train", "test"):
        part = metareg.restricted_load(read(name), encoding="latin1")
        data = part.get("data") if isinstance(part, dict) else None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise metareg.DataError(f"{what}: member {name!r} must be a dict with 'data' uint8 (N, 3072)")
        labels = [np.asarray(part.get(k, ()), dtype=np.int64).reshape(-1) for k in ("fine_labels", "coarse_labels")]
        if any(len(lab) != len(data) for lab in labels):
            raise metareg.DataError(f"{what}: member {name!r} has {len(data)} images but "
                                    f"{[len(lab) for lab in labels]} fine/coarse labels")
        images.append(data.reshape(-1, 3, 32, 32))
        fine.append(labels[0])
        coarse.append(labels[1])
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse)


def load(version: str, path: Path, what: str) -> Cifar100:
    """Verify and read one official version; labels checked against the CIFAR-100 hierarchy."""
    from metareg_datasets.cifar_splits import COARSE_OF

    read, close = _member_reader(version, path, what)
    try:
        images, fine, coarse = (_read_binary if version == "binary" else _read_python)(read, what)
    finally:
        close()
    if len(fine) and (fine.min() < 0 or fine.max() >= len(FINE_NAMES) or coarse.min() < 0
                      or coarse.max() >= len(COARSE_NAMES)):
        raise metareg.DataError(f"{what}: {path}: labels outside CIFAR-100's 100 classes / 20 superclasses; "
                                "the file is damaged: get it again")
    want = np.array([COARSE_NAMES.index(COARSE_OF[f]) for f in FINE_NAMES])
    bad = np.nonzero(want[fine] != coarse)[0]
    if len(bad):
        i = int(bad[0])
        raise metareg.DataError(f"{what}: {path}: image {i} is labelled {FINE_NAMES[fine[i]]!r} in superclass "
                                f"{COARSE_NAMES[coarse[i]]!r}, which CIFAR-100 does not have; the file is damaged")
    verified = path.is_file() or version == "python"
    return Cifar100(images, fine, coarse, path, version, verified)


def hwc_to_chw(data: np.ndarray, what: str, where: Path) -> np.ndarray:
    """Check a uint8 ``(N, 32, 32, 3)`` array (MetaOptNet's pickles) and return it as ``(N, 3, 32, 32)``."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (32, 32, 3):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise metareg.DataError(f"{what}: {where}: 'data' must be a uint8 array (N, 32, 32, 3), got {desc}")
    return np.ascontiguousarray(data.transpose(0, 3, 1, 2))


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, C, H, W)`` uint8 resized to ``size`` (bilinear, antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == size:
        return images
    out = np.empty((len(images), images.shape[1], size, size), np.uint8)
    for s in range(0, len(images), 1024):
        x = torch.from_numpy(images[s: s + 1024]).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s: s + 1024] = y.round().clamp(0, 255).to(torch.uint8).numpy()
    return out

