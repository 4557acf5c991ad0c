"""``cifarfs`` and ``fc100``: the two few-shot benchmarks cut from CIFAR-100, in their published splits.

CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 classes chosen at random once and
published as class lists. FC100 (Oreshkin et al. 2018): classes split by superclass,
12 / 4 / 4 superclasses (60 / 20 / 20 classes), so test classes share no superclass
with training ones. The lists live in :mod:`metareg_datasets.cifar_splits`.

Formats, in the order ``format=auto`` looks for them under ``root``:

* the official CIFAR-100 archives (see :mod:`metareg_datasets.cifar100`): the binary
  version first, because it is raw bytes with a published MD5 and needs no
  unpickling at all; then the python version (torchvision's download), read by a
  restricted unpickler. The split is applied here, from the published class lists,
  so one archive serves both benchmarks.
* MetaOptNet's ``CIFAR_FS_{train,val,test}.pickle`` / ``FC100_{train,val,test}.pickle``
  (dicts with ``data`` uint8 ``(N, 32, 32, 3)`` and ``labels``, CIFAR-100 class ids),
  the files most CIFAR-FS / FC100 code reads. No digest of them is published, so
  instead every file's classes are checked to be exactly the published split's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

import metareg
from metareg_datasets import cache, cifar100
from metareg_datasets.cifar_splits import FINE_NAMES, SPLITS

SPLIT_NAMES = ("train", "validation", "test")
PICKLE_PREFIX = {"cifarfs": "CIFAR_FS", "fc100": "FC100"}
PICKLE_SPLIT = {"train": "train", "validation": "val", "test": "test"}
TITLES = {"cifarfs": "CIFAR-FS", "fc100": "FC100"}


def pickle_names(name: str) -> dict[str, str]:
    return {s: f"{PICKLE_PREFIX[name]}_{PICKLE_SPLIT[s]}.pickle" for s in SPLIT_NAMES}


def _from_archive(name: str, data: cifar100.Cifar100) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images and split-local labels of each split, selected by the published class lists."""
    parts = {}
    for split in SPLIT_NAMES:
        ids = np.array([FINE_NAMES.index(c) for c in SPLITS[name][split]])
        remap = np.full(len(FINE_NAMES), -1, np.int64)
        remap[ids] = np.arange(len(ids))
        keep = np.nonzero(remap[data.fine] >= 0)[0]
        parts[split] = data.images[keep], remap[data.fine[keep]]
    return parts


def _from_pickles(name: str, base: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    what = name
    parts = {}
    for split, file in pickle_names(name).items():
        path = base / file
        raw = metareg.restricted_load(path, encoding="latin1")
        if not isinstance(raw, dict) or "data" not in raw or "labels" not in raw:
            keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
            raise metareg.DataError(f"{what}: {path}: expected a dict with 'data' and 'labels', got {keys}")
        images = cifar100.hwc_to_chw(raw["data"], what, path)
        labels = np.asarray(raw["labels"]).reshape(-1)
        if labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise metareg.DataError(f"{what}: {path}: 'labels' must be {len(images)} integer CIFAR-100 class ids, "
                                    f"got {labels.dtype} ({len(labels)})")
        published = [FINE_NAMES.index(c) for c in SPLITS[name][split]]
        found = sorted(int(x) for x in np.unique(labels))
        if found != published:
            extra = sorted(set(found) - set(published))
            missing = sorted(set(published) - set(found))
            label = lambda i: FINE_NAMES[i] if 0 <= i < len(FINE_NAMES) else str(i)  # noqa: E731
            raise metareg.DataError(
                f"{what}: {path} does not hold the published {TITLES[name]} {split} classes: "
                + (f"unexpected {[label(i) for i in extra[:3]]}" if extra else "")
                + ("; " if extra and missing else "")
                + (f"missing {[label(i) for i in missing[:3]]}" if missing else "")
                + f" ({len(found)} classes, {len(published)} published); it is not the MetaOptNet file")
        remap = np.full(len(FINE_NAMES), -1, np.int64)
        remap[published] = np.arange(len(published))
        parts[split] = images, remap[labels]
    return parts


def _missing(name: str, base: Path) -> str:
    return (f"{name}: no CIFAR-100 data found in {base}. Put the official cifar-100-binary.tar.gz (or "
            f"cifar-100-python.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html there, or MetaOptNet's "
            f"{PICKLE_PREFIX[name]}_{{train,val,test}}.pickle; or pass root=FOLDER holding them, or download=true.")


def build(
    name: str,
    root: str | None,
    format: str,
    image_size: int,
    download: bool,
) -> metareg.FewShotDataset:
    import torch

    if not 8 <= image_size <= 512:
        raise metareg.OptionError(f"{name}: image_size must be between 8 and 512 (the images are 32x32), "
                                  f"got {image_size}")
    base = Path(root).expanduser() if root else cache.cache_dir() / "cifar100"
    pickles = {s: base / f for s, f in pickle_names(name).items()}
    versions = {"auto": ("binary", "python"), "binary": ("binary",), "python": ("python",)}.get(format, ())
    found = cifar100.find(base, versions)
    if format == "auto" and found is None and all(p.is_file() for p in pickles.values()):
        format = "pickle"
    if format != "pickle" and found is None:
        if download and format in ("auto", "binary"):
            found = "binary", cifar100.fetch(base if not base.is_file() else base.parent, name)
        else:
            raise metareg.DataError(_missing(name, base))
    note = None
    if format == "pickle":
        missing = [p for p in pickles.values() if not p.is_file()]
        if missing:
            raise metareg.DataError(f"{name}: {missing[0]} not found (format=pickle needs "
                                    f"{', '.join(pickle_names(name).values())} in {base}). " + _missing(name, base))
        parts, source, version = _from_pickles(name, base), base, "pickle"
        note = "MetaOptNet's pickles: no digest is published; their classes were checked against the published split"
    else:
        data = cifar100.load(found[0], found[1], name)
        parts, source, version = _from_archive(name, data), found[1], found[0]
        if not data.verified:
            note = ("extracted cifar-100-binary files: no per-file digest is published, so only their structure "
                    "and labels were checked")
    splits, odd = {}, []
    for split, (images, labels) in parts.items():
        counts = np.bincount(labels, minlength=len(SPLITS[name][split]))
        if (counts != cifar100.PER_CLASS).any():
            odd.append(f"{split} {int(counts.min())}-{int(counts.max())}")
        images = cifar100.resize(images, image_size)
        splits[split] = metareg.ClassSplit(torch.from_numpy(np.ascontiguousarray(images)),
                                           torch.from_numpy(labels), list(SPLITS[name][split]))
    if odd:
        odd_note = f"images per class differ from CIFAR-100's {cifar100.PER_CLASS}: " + ", ".join(odd)
        note = f"{note}; {odd_note}" if note else odd_note
    counts = {s: splits[s].num_classes for s in SPLIT_NAMES}
    info = metareg.DatasetInfo(note=note, details={"format": version, "source": str(source), "classes": counts})
    return metareg.FewShotDataset(name, splits["train"], splits["validation"], splits["test"], 3, image_size, info)


def cifarfs(
    *,
    root: str | None = None,
    format: Literal["auto", "binary", "python", "pickle"] = "auto",
    image_size: int = 32,
    download: bool = False,
) -> metareg.FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100's 100 classes split 64/16/20 by the published class lists.

    root: folder holding cifar-100-binary.tar.gz or cifar-100-python.tar.gz (or their extracted folders), or
        MetaOptNet's CIFAR_FS_{train,val,test}.pickle (default: the metareg cache folder, cifar100/).
    format: binary or python (an official CIFAR-100 archive, MD5-checked), pickle (MetaOptNet's files, read by a
        restricted unpickler), or auto (the first present, in that order).
    image_size: side of the square images in pixels (the files are 32x32).
    download: fetch cifar-100-binary.tar.gz from www.cs.toronto.edu when no data is found, MD5-checked.
    """
    return build("cifarfs", root, format, image_size, download)


def fc100(
    *,
    root: str | None = None,
    format: Literal["auto", "binary", "python", "pickle"] = "auto",
    image_size: int = 32,
    download: bool = False,
) -> metareg.FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12/4/4 superclasses (60/20/20 classes).

    root: folder holding cifar-100-binary.tar.gz or cifar-100-python.tar.gz (or their extracted folders), or
        MetaOptNet's FC100_{train,val,test}.pickle (default: the metareg cache folder, cifar100/).
    format: binary or python (an official CIFAR-100 archive, MD5-checked), pickle (MetaOptNet's files, read by a
        restricted unpickler), or auto (the first present, in that order).
    image_size: side of the square images in pixels (the files are 32x32).
    download: fetch cifar-100-binary.tar.gz from www.cs.toronto.edu when no data is found, MD5-checked.
    """
    return build("fc100", root, format, image_size, download)
