"""``miniimagenet``: 100 ImageNet classes at 84x84, split 64 / 16 / 20 (Ravi & Larochelle 2017).

Two on-disk formats are read:

``pickle``: learn2learn's ``mini-imagenet-cache-{train,validation,test}.pkl``, each a
dict ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {class: [indices]}}``.
They are read with :func:`metareg.restricted_load`, which refuses every
global but the few that rebuild numpy arrays, so a tampered file cannot run code.
The images stay in the file's ``(N, H, W, 3)`` layout and are transposed per
gathered batch, so loading costs no extra copy.

``csv``: Ravi & Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv``
(``filename,label`` rows) with the images in ``images/``; decoded lazily (60,000
JPEGs would take minutes to decode up front), after every listed file has been
checked to exist.

Downloads (``download=true``) use learn2learn's published mirrors (Zenodo, then
Dropbox). No checksums for those files are published, so verification needs a
``SHA256SUMS`` file given as ``checksums=PATH`` (``sha256sum`` format); with
``verify=false`` the download is accepted unverified, with a warning.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

import metareg
from metareg_datasets import cache

PICKLE_NAMES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "validation": ("mini-imagenet-cache-validation.pkl", "mini-imagenet-cache-val.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
CSV_NAMES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
MIRRORS = {
    "train": ["https://zenodo.org/record/7978538/files/mini-imagenet-cache-train.pkl",
              "https://www.dropbox.com/s/9g8c6w345s2ek03/mini-imagenet-cache-train.pkl?dl=1"],
    "validation": ["https://zenodo.org/record/7978538/files/mini-imagenet-cache-validation.pkl",
                   "https://www.dropbox.com/s/ip1b7se3gij3r1b/mini-imagenet-cache-validation.pkl?dl=1"],
    "test": ["https://zenodo.org/record/7978538/files/mini-imagenet-cache-test.pkl",
             "https://www.dropbox.com/s/ye9jeb5tyz0x01b/mini-imagenet-cache-test.pkl?dl=1"],
}
SPLITS = ("train", "validation", "test")


class HWCImages(metareg.ImageStore):
    """A uint8 ``(N, H, W, C)`` numpy array served as ``(..., C, H, W)`` tensors, without a copy up front."""

    def __init__(self, array: np.ndarray):
        import torch

        self.array = torch.from_numpy(np.ascontiguousarray(array))

    def __len__(self) -> int:
        return self.array.shape[0]

    def gather(self, index):
        return self.array[index].movedim(-1, -3).contiguous()


def _resize_hwc(array: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = np.empty((len(array), size, size, array.shape[-1]), np.uint8)
    for s in range(0, len(array), 512):
        x = torch.from_numpy(array[s: s + 512]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[s: s + 512] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def read_pickle_split(path: Path, split: str, image_size: int):
    """(images store, labels, class names) from one learn2learn pickle, validated."""
    import torch

    data = metareg.restricted_load(path, encoding="latin1")
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise metareg.DataError(f"{path}: expected a dict with 'image_data' and 'class_dict', got {keys}")
    images, class_dict = data["image_data"], data["class_dict"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
            or images.shape[1] != images.shape[2]:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise metareg.DataError(f"{path}: 'image_data' must be a uint8 array (N, H, H, 3), got {desc}")
    if not isinstance(class_dict, dict) or not class_dict:
        raise metareg.DataError(f"{path}: 'class_dict' must be a non-empty dict {{class: [indices]}}")
    names = sorted(str(k) for k in class_dict)
    labels = np.full(len(images), -1, np.int64)
    for label, key in enumerate(sorted(class_dict, key=str)):
        idx = np.asarray(class_dict[key]).reshape(-1)
        if len(idx) and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(images)):
            raise metareg.DataError(f"miniimagenet: {path}: class {key!r} lists image indices outside "
                                    f"[0, {len(images)}); the file is damaged: delete it and download it again")
        idx = idx.astype(np.int64)  # an empty list arrives as float64
        if (labels[idx] >= 0).any():
            raise metareg.DataError(f"miniimagenet: {path}: class {key!r} shares images with another class; the "
                                    "file is damaged: delete it and download it again")
        labels[idx] = label
    keep = np.nonzero(labels >= 0)[0]
    if len(keep) != len(images):
        images, labels = images[keep], labels[keep]
    if images.shape[1] != image_size:
        images = _resize_hwc(images, image_size)
    return HWCImages(images), torch.from_numpy(labels), names


def _load_rgb(path: Path, image_size: int):
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR, reducing_gap=2.0)
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise metareg.DataError(f"miniimagenet: cannot decode image {path}: {exc}") from exc


def read_csv_split(csv_path: Path, image_dir: Path, image_size: int):
    import torch

    rows = []
    try:
        with open(csv_path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
                raise metareg.DataError(f"{csv_path}: expected a header 'filename,label', got {header}")
            for n, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) < 2:
                    raise metareg.DataError(f"{csv_path}:{n}: expected 'filename,label', got {row}")
                rows.append((row[0].strip(), row[1].strip()))
    except OSError as exc:
        raise metareg.DataError(f"cannot read {csv_path}: {exc}") from exc
    if not rows:
        raise metareg.DataError(f"{csv_path}: no rows")
    names = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(names)}
    files = [image_dir / f for f, _ in rows]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise metareg.DataError(f"{csv_path}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    labels = torch.tensor([index[label] for _, label in rows], dtype=torch.long)
    store = metareg.LazyImages(len(files), lambda i: _load_rgb(files[i], image_size))
    return store, labels, names


def _download_pickles(root: Path, checksums: str | None, verify: bool) -> None:
    sums = cache.read_checksum_file(checksums) if checksums else None
    if sums is None and verify:
        raise metareg.DataError(
            "miniimagenet: no checksums are published for learn2learn's mini-imagenet-cache-*.pkl mirrors. "
            "Pass checksums=PATH to a SHA256SUMS file ('HEX  mini-imagenet-cache-train.pkl' lines) to verify the "
            "download, or verify=false to accept it unverified."
        )
    for split in SPLITS:
        if any((root / n).is_file() for n in PICKLE_NAMES[split]):
            continue
        name = PICKLE_NAMES[split][0]
        check = None
        if sums is not None:
            if name not in sums:
                raise metareg.DataError(f"miniimagenet: checksum file {checksums} has no line for {name}")
            want = {"sha256": sums[name]}

            def check(tmp, want=want, name=name):
                cache.verify(tmp, want, what=f"miniimagenet {name}")
        else:
            warnings.warn(f"miniimagenet: downloading {name} without checksum verification (verify=false)",
                          RuntimeWarning, stacklevel=3)
        cache.download(MIRRORS[split], root / name, check, what=f"miniimagenet {name}",
                       hint=f"Put learn2learn's {name} in {root} or pass root=FOLDER that holds it.")


def miniimagenet(
    *,
    root: str | None = None,
    format: Literal["auto", "pickle", "csv"] = "auto",
    image_size: int = 84,
    download: bool = False,
    checksums: str | None = None,
    verify: bool = True,
) -> metareg.FewShotDataset:
    """miniImageNet: 100 ImageNet classes, 600 colour images each, split 64/16/20 (Ravi & Larochelle).

    root: folder holding mini-imagenet-cache-{train,validation,test}.pkl, or train.csv/val.csv/test.csv and
        images/ (default: the metareg cache folder, miniimagenet/).
    format: pickle (learn2learn's files, read by a restricted unpickler), csv (Ravi & Larochelle's split
        files + images/), or auto (whichever is present, pickles first).
    image_size: side of the square images in pixels (the files are 84x84).
    download: fetch missing pickles from learn2learn's mirrors (Zenodo, Dropbox).
    checksums: SHA256SUMS file to verify downloads against (no digests are published for the mirrors).
    verify: refuse to download without checksums; false accepts an unverified download with a warning.
    """
    if not 8 <= image_size <= 512:
        raise metareg.OptionError(f"miniimagenet: image_size must be between 8 and 512, got {image_size}")
    base = Path(root).expanduser() if root else cache.cache_dir() / "miniimagenet"

    def pickles_present():
        return all(any((base / n).is_file() for n in PICKLE_NAMES[s]) for s in SPLITS)

    def csvs_present():
        return all((base / CSV_NAMES[s]).is_file() for s in SPLITS)

    if format == "auto":
        format = "pickle" if pickles_present() else "csv" if csvs_present() else "pickle"
    if format == "pickle" and not pickles_present() and download:
        base.mkdir(parents=True, exist_ok=True)
        _download_pickles(base, checksums, verify)
    parts = {}
    if format == "pickle":
        for split in SPLITS:
            path = next((base / n for n in PICKLE_NAMES[split] if (base / n).is_file()), None)
            if path is None:
                raise metareg.DataError(
                    f"miniimagenet: {PICKLE_NAMES[split][0]} not found in {base}. Pass root=FOLDER holding "
                    "learn2learn's mini-imagenet-cache-{train,validation,test}.pkl (or Ravi & Larochelle's "
                    "train.csv/val.csv/test.csv with images/), or download=true."
                )
            parts[split] = read_pickle_split(path, split, image_size)
    else:
        image_dir = base / "images"
        for split in SPLITS:
            path = base / CSV_NAMES[split]
            if not path.is_file():
                raise metareg.DataError(f"miniimagenet: {path} not found (format=csv needs train.csv, val.csv, "
                                        f"test.csv and images/ in {base})")
            parts[split] = read_csv_split(path, image_dir, image_size)
    splits = {s: metareg.ClassSplit(*parts[s]) for s in SPLITS}
    counts = {s: splits[s].num_classes for s in SPLITS}
    note = f"class counts {counts} differ from the standard 64/16/20" if tuple(counts.values()) != (64, 16, 20) \
        else None
    # Its classes are ImageNet classes: the core warns when ImageNet-pretrained weights meet them.
    info = metareg.DatasetInfo(imagenet_derived=True, note=note,
                               details={"format": format, "root": str(base), "classes": counts})
    return metareg.FewShotDataset("miniimagenet", splits["train"], splits["validation"], splits["test"], 3,
                                  image_size, info)
