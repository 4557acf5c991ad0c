"""Tiny files in learn2learn's on-disk formats, for tests and for trying the plugin offline.

Each writer creates ``classes`` (train, validation, test) classes of ``per_class``
images under ``root``, laid out exactly as learn2learn expects after its own download
step, and returns ``root``. Image ``i`` of class ``c`` is a flat grey/colour square
whose value encodes ``c``, so tests can check that labels and pixels agree.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

SPLIT_FILES = {"train": "train", "validation": "val", "test": "test"}


def _value(c: int) -> int:
    return (37 * c + 11) % 256


def _rgb(c: int, size: int, i: int = 0) -> np.ndarray:
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = (_value(c), (_value(c) + 85) % 256, (_value(c) + 170) % 256)
    image[0, 0] = i % 256  # one pixel differs per sample
    return image


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _split_classes(classes: tuple[int, int, int]) -> dict[str, list[int]]:
    out, start = {}, 0
    for split, count in zip(SPLIT_FILES, classes, strict=True):
        out[split] = list(range(start, start + count))
        start += count
    return out


def write_mini_imagenet(root: str | Path, classes=(5, 3, 3), per_class: int = 4, size: int = 84) -> Path:
    """mini-imagenet-cache-<split>.pkl: {"image_data": (N, H, W, 3) uint8, "class_dict": {wnid: [rows]}}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in _split_classes(classes).items():
        images = np.stack([_rgb(c, size, i) for c in ids for i in range(per_class)])
        class_dict = {f"n{c:08d}": list(range(k * per_class, (k + 1) * per_class)) for k, c in enumerate(ids)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as fh:
            pickle.dump({"image_data": images, "class_dict": class_dict}, fh, protocol=4)
    return root


def write_fc100(root: str | Path, classes=(5, 3, 3), per_class: int = 4, size: int = 32) -> Path:
    """FC100_<train|val|test>.pickle: {"data": (N, 32, 32, 3) uint8, "labels": [global CIFAR-100 ids]}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in _split_classes(classes).items():
        data = np.stack([_rgb(c, size, i) for c in ids for i in range(per_class)])
        labels = [c for c in ids for _ in range(per_class)]
        with open(root / f"FC100_{SPLIT_FILES[split]}.pickle", "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh, protocol=2)
    return root


def write_cifarfs(root: str | Path, classes=(5, 3, 3), per_class: int = 4, size: int = 32) -> Path:
    """cifarfs/processed/<train|val|test>/<class>/<n>.png, as learn2learn leaves it after processing."""
    root = Path(root)
    for split, ids in _split_classes(classes).items():
        for c in ids:
            folder = root / "cifarfs" / "processed" / SPLIT_FILES[split] / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png(_rgb(c, size, i)))
    return root


def write_tiered_imagenet(root: str | Path, classes=(5, 3, 3), per_class: int = 4, size: int = 84) -> Path:
    """tiered-imagenet/<split>_images_png.pkl (PNG bytes per image) and <split>_labels.pkl."""
    folder = Path(root) / "tiered-imagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in _split_classes(classes).items():
        short = SPLIT_FILES[split]
        images = [np.frombuffer(_png(_rgb(c, size, i)), dtype=np.uint8) for c in ids for i in range(per_class)]
        specific = [k for k in range(len(ids)) for _ in range(per_class)]  # per-split class ids
        labels = {
            "label_specific": np.asarray(specific),
            "label_general": np.zeros(len(specific), dtype=np.int64),
            "label_specific_str": [f"n{c:08d}" for c in ids],
            "label_general_str": ["all"],
        }
        with open(folder / f"{short}_images_png.pkl", "wb") as fh:
            pickle.dump(images, fh, protocol=4)
        with open(folder / f"{short}_labels.pkl", "wb") as fh:
            pickle.dump(labels, fh, protocol=4)
    return Path(root)


def write_omniglot(root: str | Path, alphabets: int = 2, characters: int = 8, per_class: int = 3) -> Path:
    """omniglot-py/images_{background,evaluation}/<Alphabet>/characterNN/*.png (torchvision's layout)."""
    root = Path(root)
    for part in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for k in range(characters):
                c = a * characters + k + (0 if part == "images_background" else alphabets * characters)
                folder = root / "omniglot-py" / part / f"{part[7:].title()}{a}" / f"character{k + 1:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    image = np.full((105, 105), _value(c), dtype=np.uint8)
                    (folder / f"{c:04d}_{i + 1:02d}.png").write_bytes(_png(image))
    return root


def _l2l_splits(module: str) -> dict[str, list[str]]:
    import importlib

    from ._l2l import learn2learn

    learn2learn()
    return importlib.import_module(f"learn2learn.vision.datasets.{module}").SPLITS


def write_quickdraw(root: str | Path, per_class: int = 3) -> Path:
    """quickdraw/<class>.npy for every class of learn2learn's split: (N, 784) uint8 bitmaps."""
    folder = Path(root) / "quickdraw"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [c for split in ("train", "validation", "test") for c in _l2l_splits("quickdraw")[split]]
    for c, cls in enumerate(classes):
        data = np.full((per_class, 784), _value(c), dtype=np.uint8)
        data[:, 0] = np.arange(per_class)
        np.save(folder / f"{cls}.npy", data)
    return Path(root)


def write_dtd(root: str | Path, per_class: int = 2, size: int = 24) -> Path:
    """describable_textures/dtd/images/<class>/<n>.png for every class of learn2learn's split."""
    base = Path(root) / "describable_textures" / "dtd" / "images"
    classes = [c for split in ("train", "validation", "test") for c in _l2l_splits("describable_textures")[split]]
    for c, cls in enumerate(classes):
        (base / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (base / cls / f"{cls}_{i:04d}.png").write_bytes(_png(_rgb(c, size, i)))
    return Path(root)
