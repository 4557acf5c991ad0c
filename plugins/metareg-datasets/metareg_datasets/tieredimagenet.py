"""``tieredimagenet``: 608 ImageNet classes at 84x84 under 34 categories (Ren et al., ICLR 2018).

The split is by category, so test classes share no ImageNet ancestor below the 34
categories with training ones: 351 / 97 / 160 classes from 20 / 6 / 8 categories.

Two on-disk formats (``format=auto`` takes the first present, in ``root`` or
``root/tiered-imagenet``):

``png`` (the published one): Ren et al.'s ``{train,val,test}_images_png.pkl`` (a
pickled list of PNG-encoded images) with ``{split}_labels.pkl`` (a dict:
``label_specific`` per-image class ids, ``label_specific_str`` class names,
``label_general`` / ``label_general_str`` the categories). Both are read with
:func:`metareg.restricted_load` (numpy arrays and plain data only, so a tampered file
cannot run code). The PNG bytes stay in memory and are decoded on demand with PIL
(decoding 779,165 images up front would take many minutes and ~13 GB).

``npz``: ``{split}_images.npz`` (``images`` uint8 ``(N, 84, 84, 3)``, what Ren et al.'s
code decompresses the PNGs into and what RFS / Meta-Baseline distribute) with the
same ``{split}_labels.pkl`` (or one holding only ``labels``). Read without pickle
(``allow_pickle=False``). Their code decoded with OpenCV, so the channels are
blue-green-red; ``npz_order=bgr`` (default) swaps them back.

No digest of any of these files is published; ``checksums=SHA256SUMS`` verifies
them against a list you trust (``sha256sum`` format), and the class and category
counts are checked against the published ones (``info.note`` says when they differ).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np

import metareg
from metareg_datasets import cache

SPLITS = {"train": "train", "validation": "val", "test": "test"}
PUBLISHED = {"train": (351, 20), "validation": (97, 6), "test": (160, 8)}  # (classes, categories), Ren et al. 2018
FILES = {"png": "{}_images_png.pkl", "npz": "{}_images.npz"}
SIZE = 84


def _labels(path: Path, split: str, count: int | None) -> tuple[np.ndarray, list[str], list[str] | None]:
    """(per-image class ids, class names, category of each class or None) from one ``_labels.pkl``."""
    raw = metareg.restricted_load(path, encoding="latin1")
    if not isinstance(raw, dict):
        raise metareg.DataError(f"tieredimagenet: {path}: expected a dict, got {type(raw).__name__}")
    raw = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
    key = "label_specific" if "label_specific" in raw else "labels" if "labels" in raw else None
    if key is None:
        raise metareg.DataError(f"tieredimagenet: {path}: expected 'label_specific' (or 'labels'), "
                                f"got keys {sorted(raw)}")
    labels = np.asarray(raw[key]).reshape(-1)
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise metareg.DataError(f"tieredimagenet: {path}: '{key}' must be non-negative integer class ids")
    labels = labels.astype(np.int64)
    if count is not None and len(labels) != count:
        raise metareg.DataError(f"tieredimagenet: {path} labels {len(labels)} images but the image file holds "
                                f"{count}; the files do not belong together")
    k = int(labels.max()) + 1 if len(labels) else 0
    names = raw.get("label_specific_str")
    if key == "label_specific" and names is not None:
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
        if len(names) < k:
            raise metareg.DataError(f"tieredimagenet: {path}: {k} class ids but {len(names)} class names")
    else:
        names = [f"{SPLITS[split]}{c:03d}" for c in range(k)]
    categories = None
    general, general_str = raw.get("label_general"), raw.get("label_general_str")
    if key == "label_specific" and general is not None and general_str is not None:
        general = np.asarray(general).reshape(-1).astype(np.int64)
        general_str = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in general_str]
        if len(general) != len(labels) or (len(general) and general.max() >= len(general_str)):
            raise metareg.DataError(f"tieredimagenet: {path}: 'label_general' does not match the images or "
                                    "'label_general_str'")
        categories = [""] * k
        for c, g in zip(labels.tolist(), general.tolist(), strict=True):
            categories[c] = general_str[g]
    return labels, names[:k], categories


class PNGImages(metareg.ImageStore):
    """PNG-encoded images decoded with PIL when gathered, as ``uint8 (3, size, size)``."""

    def __init__(self, items: list, size: int, source: Path):
        self.items, self.size, self.source = items, size, source

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, i: int):
        import torch
        from PIL import Image, UnidentifiedImageError

        item = self.items[i]
        data = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0)
                return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise metareg.DataError(f"tieredimagenet: image {i} of {self.source} is not a readable PNG ({exc}); "
                                    "the file is damaged: get it again") from None

    def gather(self, index):
        import torch

        flat = [self._decode(int(i)) for i in index.reshape(-1)]
        return torch.stack(flat).view(*index.shape, 3, self.size, self.size)


class ArrayImages(metareg.ImageStore):
    """A uint8 ``(N, H, W, 3)`` array served as ``(..., 3, size, size)``, channels swapped when BGR."""

    def __init__(self, array: np.ndarray, size: int, bgr: bool):
        import torch

        self.array, self.size, self.bgr = torch.from_numpy(array), size, bgr

    def __len__(self) -> int:
        return self.array.shape[0]

    def gather(self, index):
        import torch.nn.functional as F

        x = self.array[index.reshape(-1)].movedim(-1, -3)
        if self.bgr:
            x = x.flip(-3)
        if x.shape[-1] != self.size:
            x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255).byte()
        return x.contiguous().view(*index.shape, 3, self.size, self.size)


def _read_images(fmt: str, path: Path, size: int, bgr: bool) -> metareg.ImageStore:
    if fmt == "png":
        items = metareg.restricted_load(path, encoding="latin1")
        if not isinstance(items, list) or not all(isinstance(x, (bytes, bytearray, np.ndarray)) for x in items[:8]):
            raise metareg.DataError(f"tieredimagenet: {path}: expected a list of PNG-encoded images, got "
                                    f"{type(items).__name__}")
        return PNGImages(items, size, path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise metareg.DataError(f"tieredimagenet: {path}: no 'images' array (has {z.files})")
            array = z["images"]
    except metareg.DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise metareg.DataError(f"tieredimagenet: {path} is not a readable .npz ({exc}); get it again") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[1] != array.shape[2]:
        raise metareg.DataError(f"tieredimagenet: {path}: 'images' must be uint8 (N, H, H, 3), got "
                                f"{array.dtype} {array.shape}")
    return ArrayImages(array, size, bgr)


def _folder(base: Path) -> Path:
    for folder in (base, base / "tiered-imagenet", base / "tieredimagenet"):
        if any((folder / FILES[f].format("train")).is_file() for f in FILES):
            return folder
    return base


def tieredimagenet(
    *,
    root: str | None = None,
    format: Literal["auto", "png", "npz"] = "auto",
    image_size: int = 84,
    npz_order: Literal["bgr", "rgb"] = "bgr",
    checksums: str | None = None,
) -> metareg.FewShotDataset:
    """tieredImageNet (Ren et al. 2018): 608 ImageNet classes, 84x84, split by category 351/97/160 (20/6/8).

    root: folder holding {train,val,test}_images_png.pkl (or _images.npz) and {train,val,test}_labels.pkl, directly
        or in tiered-imagenet/ (default: the metareg cache folder, tieredimagenet/).
    format: png (Ren et al.'s published pickles of PNG bytes, decoded on demand), npz (decoded arrays), or auto
        (png first).
    image_size: side of the square images in pixels (the files are 84x84).
    npz_order: channel order of the npz images: bgr (written by OpenCV, as Ren et al.'s and RFS's are) or rgb.
    checksums: SHA256SUMS file ('HEX  FILENAME' lines) to verify every file read against; none are published.
    """
    import torch

    if not 8 <= image_size <= 512:
        raise metareg.OptionError(f"tieredimagenet: image_size must be between 8 and 512, got {image_size}")
    base = Path(root).expanduser() if root else cache.cache_dir() / "tieredimagenet"
    folder = _folder(base)

    def present(fmt):
        return all((folder / FILES[fmt].format(s)).is_file() and (folder / f"{s}_labels.pkl").is_file()
                   for s in SPLITS.values())

    if format == "auto":
        format = "png" if present("png") else "npz" if present("npz") else "png"
    if not present(format):
        missing = next(folder / n for s in SPLITS.values() for n in (FILES[format].format(s), f"{s}_labels.pkl")
                       if not (folder / n).is_file())
        raise metareg.DataError(
            f"tieredimagenet: {missing} not found. Get Ren et al.'s tiered-imagenet.tar (linked from "
            "github.com/renmengye/few-shot-ssl-public), extract it and pass root=FOLDER holding "
            "{train,val,test}_images_png.pkl and {train,val,test}_labels.pkl (or _images.npz with format=npz).")
    sums = cache.read_checksum_file(checksums) if checksums else None
    parts, notes, categories = {}, [], {}
    for split, short in SPLITS.items():
        image_path, label_path = folder / FILES[format].format(short), folder / f"{short}_labels.pkl"
        if sums is not None:
            for path in (image_path, label_path):
                if path.name not in sums:
                    raise metareg.DataError(f"tieredimagenet: checksum file {checksums} has no line for {path.name}")
                cache.verify(path, {"sha256": sums[path.name]}, what="tieredimagenet")
        store = _read_images(format, image_path, image_size, npz_order == "bgr")
        labels, names, cats = _labels(label_path, split, len(store))
        parts[split] = store, labels, names
        categories[split] = sorted(set(cats)) if cats else None
        got = (len(names), len(categories[split]) if cats else None)
        if got[0] != PUBLISHED[split][0] or (got[1] is not None and got[1] != PUBLISHED[split][1]):
            notes.append(f"{split}: {got[0]} classes" + (f" in {got[1]} categories" if got[1] is not None else "")
                         + f", published {PUBLISHED[split][0]} in {PUBLISHED[split][1]}")
    # ImageNet has a few repeated class names (two 'crane's, two 'maillot's): keep names unique.
    seen: dict[str, int] = {}
    splits = {}
    for split, (store, labels, names) in parts.items():
        unique = []
        for n in names:
            seen[n] = seen.get(n, 0) + 1
            unique.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
        splits[split] = metareg.ClassSplit(store, torch.from_numpy(labels), unique)
    counts = {s: splits[s].num_classes for s in SPLITS}
    note = ("class counts differ from the published ones: " + "; ".join(notes)) if notes else None
    # Its classes are ImageNet classes: the core warns when ImageNet-pretrained weights meet them.
    info = metareg.DatasetInfo(imagenet_derived=True, note=note,
                               details={"format": format, "root": str(folder), "classes": counts,
                                        "verified": sums is not None})
    return metareg.FewShotDataset("tieredimagenet", splits["train"], splits["validation"], splits["test"], 3,
                                  image_size, info)
