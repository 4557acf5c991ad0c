"""Tiny files in the exact published formats read by ``cifarfs``, ``fc100`` and ``tieredimagenet``, for tests.

Pixels encode where an image came from, so a test can check that labels line up with
images: CIFAR images have red = CIFAR-100 class id and green = the image's index
within its class; tieredImageNet images have red = 10 x the split-local class id (mod 256)
and green = 255 - red.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from metareg_datasets.cifar_splits import COARSE_NAMES, COARSE_OF, FINE_NAMES, SPLITS


def _cifar_records(per_class: int, seed: int = 0):
    """(train, test) lists of (coarse, fine, chw image): the first per_class - 1 images of a class in train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for fine, name in enumerate(FINE_NAMES):
        coarse = COARSE_NAMES.index(COARSE_OF[name])
        for k in range(per_class):
            image = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
            image[0], image[1] = fine, k
            (test if k == per_class - 1 else train).append((coarse, fine, image))
    return train, test


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar100_binary(folder: str | Path, per_class: int = 2) -> Path:
    """``cifar-100-binary.tar.gz``: train.bin / test.bin records and the two label-name files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-100-binary.tar.gz"
    train, test = _cifar_records(per_class)
    with tarfile.open(path, "w:gz") as tar:
        for name, records in (("train.bin", train), ("test.bin", test)):
            raw = b"".join(bytes([c, f]) + img.tobytes() for c, f, img in records)
            _add(tar, f"cifar-100-binary/{name}", raw)
        _add(tar, "cifar-100-binary/fine_label_names.txt", ("\n".join(FINE_NAMES) + "\n").encode())
        _add(tar, "cifar-100-binary/coarse_label_names.txt", ("\n".join(COARSE_NAMES) + "\n").encode())
    return path


def write_cifar100_python(folder: str | Path, per_class: int = 2) -> Path:
    """``cifar-100-python.tar.gz``: the pickled ``train`` / ``test`` / ``meta`` dicts (protocol 2, as published)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-100-python.tar.gz"
    train, test = _cifar_records(per_class)
    with tarfile.open(path, "w:gz") as tar:
        for name, records in (("train", train), ("test", test)):
            part = {"batch_label": f"{name}ing batch 1 of 1", "filenames": [f"{i}.png" for i in range(len(records))],
                    "fine_labels": [f for _, f, _ in records], "coarse_labels": [c for c, _, _ in records],
                    "data": np.stack([img.reshape(-1) for _, _, img in records])}
            _add(tar, f"cifar-100-python/{name}", pickle.dumps(part, protocol=2))
        meta = {"fine_label_names": list(FINE_NAMES), "coarse_label_names": list(COARSE_NAMES)}
        _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
    return path


def write_metaoptnet_pickles(folder: str | Path, dataset: str, per_class: int = 2) -> Path:
    """MetaOptNet's ``CIFAR_FS_<split>.pickle`` / ``FC100_<split>.pickle``: data (N, 32, 32, 3), CIFAR-100 ids."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = _cifar_records(per_class)
    by_class: dict[int, list[np.ndarray]] = {}
    for _, fine, image in train + test:
        by_class.setdefault(fine, []).append(image)
    prefix = {"cifarfs": "CIFAR_FS", "fc100": "FC100"}[dataset]
    for split, short in (("train", "train"), ("validation", "val"), ("test", "test")):
        ids = [FINE_NAMES.index(c) for c in SPLITS[dataset][split]]
        data = np.stack([img.transpose(1, 2, 0) for c in ids for img in by_class[c]])
        labels = [c for c in ids for _ in by_class[c]]
        with open(folder / f"{prefix}_{short}.pickle", "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh, protocol=2)
    return folder


def tiered_rgb(class_id: int, size: int = 84, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    red = 10 * class_id % 256
    image[..., 0], image[..., 1] = red, 255 - red
    return image


def write_tiered(folder: str | Path, format: str = "png", classes=(4, 3, 3), categories=(2, 1, 1),
                 per_class: int = 3, size: int = 84) -> Path:
    """Ren et al.'s ``<split>_images_png.pkl`` (or ``<split>_images.npz``, BGR) with ``<split>_labels.pkl``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, g in zip(("train", "val", "test"), classes, categories, strict=True):
        specific = np.repeat(np.arange(n), per_class).astype(np.int32)
        images = [tiered_rgb(int(c), size, seed=i) for i, c in enumerate(specific)]
        if format == "png":
            encoded = []
            for image in images:
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, "PNG")
                encoded.append(np.frombuffer(buf.getvalue(), np.uint8).reshape(-1, 1))  # as cv2.imencode returns
            with open(folder / f"{split}_images_png.pkl", "wb") as fh:
                pickle.dump(encoded, fh, protocol=2)
        else:
            np.savez(folder / f"{split}_images.npz", images=np.stack(images)[..., ::-1])
        labels = {"label_specific": specific, "label_general": (specific % g).astype(np.int32),
                  "label_specific_str": [f"{split} class {c}" for c in range(n)],
                  "label_general_str": [f"{split} category {k}" for k in range(g)]}
        with open(folder / f"{split}_labels.pkl", "wb") as fh:
            pickle.dump(labels, fh, protocol=2)
    return folder
