"""``imagefolder``: the user's own images, one folder per class.

Two layouts:

* ``root/train/<class>/*``, ``root/val/<class>/*`` (or ``validation/``), ``root/test/<class>/*``:
  the user's own class split (a class folder name in two splits is an error).
* ``root/<class>/*``: classes are split into disjoint train / validation / test sets
  by ``ratios`` and ``seed``. ``ratios=1,0,0`` gives every class to training, for uses
  that need no held-out classes (pre-training, a prototype classifier of all the user's
  classes); ``metareg run``, which validates and tests on unseen classes, refuses it.

Image files: ``metareg.IMAGE_SUFFIXES`` (.png .jpg .jpeg .bmp .gif .tif .tiff .webp .ppm .pgm,
any case); other files are ignored. Every image is read by ``metareg.read_image``, as
``metareg predict`` reads new images: turned upright by its EXIF tag, 16-bit and float
grey scaled to 8 bits, transparency flattened onto white, converted to ``channels``
(1 = grey, 3 = RGB), centre-cropped to a square and resized to ``image_size``.

Everything is checked when the dataset is built, before any training: an empty class
folder or an unreadable image is a :class:`metareg.DataError` naming it. By default
images are decoded then, into one uint8 tensor (episodes are then gathered from
memory at tensor speed, and a truncated file cannot fail mid-run). ``lazy=true`` is
for folders too large for memory: files are only opened and verified up front and
decoded per episode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import metareg

SPLIT_DIRS = {"train": ("train",), "validation": ("val", "validation", "valid"), "test": ("test",)}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if metareg.is_image_file(p))
    if not files:
        raise metareg.DataError(
            f"imagefolder: class folder {folder} has no images ({', '.join(metareg.IMAGE_SUFFIXES)}); "
            "add images to it or remove the folder"
        )
    return files


def _decode(path: Path, image_size: int, channels: int):
    try:
        return metareg.read_image(path, channels, image_size)
    except metareg.DataError as exc:
        raise metareg.DataError(f"imagefolder: {exc}") from None


def _check(path: Path) -> None:
    try:
        metareg.check_image(path)
    except metareg.DataError as exc:
        raise metareg.DataError(f"imagefolder: {exc}") from None


def _build_split(classes: list[tuple[str, list[Path]]], image_size: int, channels: int, lazy: bool):
    import torch

    files = [f for _, fs in classes for f in fs]
    labels = torch.cat([torch.full((len(fs),), i, dtype=torch.long) for i, (_, fs) in enumerate(classes)]) \
        if classes else torch.zeros(0, dtype=torch.long)
    names = [c for c, _ in classes]
    if lazy:
        for f in files:
            _check(f)
        store = metareg.LazyImages(len(files), lambda i: _decode(files[i], image_size, channels))
    elif files:
        store = torch.stack([_decode(f, image_size, channels) for f in files])
    else:
        store = torch.zeros(0, channels, image_size, image_size, dtype=torch.uint8)
    return metareg.ClassSplit(store, labels, names)


def imagefolder(
    *,
    root: str,
    image_size: int = 84,
    channels: Literal[1, 3] = 3,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    lazy: bool = False,
) -> metareg.FewShotDataset:
    """Images in root/<class>/ folders (or root/train|val|test/<class>/), split by class.

    root: the folder holding one sub-folder per class, or train/, val/ and test/ folders of class folders.
    image_size: side of the square images (centre-cropped, then resized).
    channels: 1 for grey-scale, 3 for RGB (images are converted).
    ratios: share of classes for train, validation, test when root has no train/val/test folders;
        1,0,0 gives every class to training (no validation or test classes: not for `metareg run`).
    seed: seed of that class split.
    lazy: decode images per episode instead of all at start-up (for folders too large for memory).
    """
    if not 4 <= image_size <= 1024:
        raise metareg.OptionError(f"imagefolder: image_size must be between 4 and 1024, got {image_size}")
    if channels not in (1, 3):
        raise metareg.OptionError(f"imagefolder: channels must be 1 or 3, got {channels}")
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise metareg.OptionError(f"imagefolder: ratios must be three non-negative numbers, got {ratios}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise metareg.DataError(f"imagefolder: root {base} is not a folder; pass root=FOLDER of class folders")
    subdirs = {p.name.lower(): p for p in _class_dirs(base)}
    found = {split: next((subdirs[n] for n in names if n in subdirs), None) for split, names in SPLIT_DIRS.items()}
    per_split: dict[str, list[tuple[str, list[Path]]]] = {}
    if found["train"] is not None or found["test"] is not None:
        missing = [s for s, p in found.items() if p is None]
        if missing:
            raise metareg.DataError(
                f"imagefolder: {base} has train/test folders but no {' or '.join(SPLIT_DIRS[missing[0]])}/ folder; "
                "provide train/, val/ and test/ folders of class folders, or put class folders directly in root "
                "to split them by ratio"
            )
        layout = "folders"
        for split, folder in found.items():
            per_split[split] = [(d.name, _images_in(d)) for d in _class_dirs(folder)]
            if not per_split[split]:
                raise metareg.DataError(f"imagefolder: {folder} has no class folders")
    else:
        layout = "ratios"
        dirs = _class_dirs(base)
        used = [s for s, r in zip(SPLIT_DIRS, ratios, strict=True) if r > 0]
        # A class for every split with a share, and 2 at least: a few-shot answer chooses between classes.
        needed = max(2, len(used))
        if len(dirs) < needed:
            raise metareg.DataError(
                f"imagefolder: {base} has {len(dirs)} class folder(s); at least {needed} are needed to split "
                f"classes into {', '.join(used)} (ratios={','.join(f'{r:g}' for r in ratios)})"
            )
        classes = [(d.name, _images_in(d)) for d in dirs]
        assignment = metareg.split_classes(list(range(len(classes))), tuple(ratios), seed)
        for split, ids in assignment.items():
            per_split[split] = [classes[i] for i in ids]
    splits = {s: _build_split(per_split[s], image_size, channels, lazy) for s in SPLIT_DIRS}
    info = metareg.DatasetInfo(
        details={"root": str(base), "layout": layout, "classes": {s: splits[s].num_classes for s in splits}})
    return metareg.FewShotDataset("imagefolder", splits["train"], splits["validation"], splits["test"], channels,
                                  image_size, info)
