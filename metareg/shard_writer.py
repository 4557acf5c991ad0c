"""Writing a dataset's splits as LitData shards with a class index (:mod:`metareg.shard_format`).

Images are read from the dataset's image store a block at a time, so a dataset whose images
are files on disk (``LazyImages``) is never held in memory whole. Everything is written into
a staging folder beside ``OUT_DIR`` that is renamed into place at the end
(:func:`metareg.files.atomic_directory`): a shard folder is complete or absent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from metareg.errors import ConfigError, DataError
from metareg.files import atomic_directory
from metareg.shard_format import INDEX_FILE, SplitIndex, class_order, index_document, litdata
from metareg.splits import SPLITS

BLOCK = 1024  # images gathered from the store at a time: bounded memory on the way in
CHUNK_BYTES = 64 << 20  # LitData's usual chunk size: few files, and a chunk is what object storage sends at once


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an ``OUT_DIR`` that holds anything (before any work starts); an empty folder may be filled."""
    out = Path(out_dir)
    if os.path.lexists(out):
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"{out} exists and is not a folder; give a new folder for the shards")
        if any(out.iterdir()):
            raise ConfigError(f"{out} exists and is not empty; give a new or empty folder for the shards "
                              "(nothing was written)")
    return out


def _split_items(split, labels: np.ndarray, channels: int, image_size: int):
    """``(position, item)`` class by class, gathering BLOCK images at a time from the split's store."""
    import torch

    order = class_order(labels)
    for start in range(0, len(order), BLOCK):
        index = torch.from_numpy(order[start:start + BLOCK].copy())
        images = split.images.gather(index)
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (channels, image_size, image_size):
            raise DataError(f"the dataset's images are {images.dtype} {tuple(images.shape[1:])}, expected uint8 "
                            f"({channels}, {image_size}, {image_size})")
        for k, image in enumerate(images.numpy()):
            source = int(order[start + k])
            yield start + k, {"image": np.ascontiguousarray(image), "label": int(labels[source]), "index": source}


def write_shards(dataset, out_dir: str | os.PathLike, *, source: str, options: dict[str, Any],
                 chunk_bytes: int = CHUNK_BYTES, progress=None) -> dict[str, int]:
    """Write ``dataset`` (a :class:`metareg.FewShotDataset`) under ``out_dir``; images per split.

    ``source`` and ``options`` name the registered dataset and its options, recorded in the index.
    ``progress(split, written, total)`` is called after each block, if given.
    """
    lit = litdata()
    out = check_out_dir(out_dir)
    was_empty = out.is_dir()
    if was_empty:
        out.rmdir()  # empty (checked): atomic_directory renames the staging folder into its place
    try:
        return _write(dataset, out, lit, source=source, options=options, chunk_bytes=chunk_bytes, progress=progress)
    except BaseException:
        if was_empty and not os.path.lexists(out):
            out.mkdir()  # leave the user's empty folder as it was
        raise


def _write(dataset, out: Path, lit, *, source, options, chunk_bytes, progress) -> dict[str, int]:
    from litdata.streaming.writer import BinaryWriter

    written: dict[str, int] = {}
    with atomic_directory(out) as staging:
        (staging / "labels").mkdir()
        splits = {}
        for name in SPLITS:
            split = dataset.split(name)
            labels = split.labels.numpy().astype(np.int64)
            counts = np.bincount(labels, minlength=len(split.classes))
            splits[name] = SplitIndex(name, tuple(map(str, split.classes)), tuple(int(c) for c in counts))
            np.save(staging / "labels" / f"{name}.npy", labels, allow_pickle=False)
            if len(labels):
                writer = BinaryWriter(str(staging / name), chunk_bytes=chunk_bytes)
                for position, item in _split_items(split, labels, dataset.channels, dataset.image_size):
                    writer.add_item(position, item)
                    if progress is not None and (position + 1) % BLOCK == 0:
                        progress(name, position + 1, len(labels))
                writer.done()
                writer.merge()
            written[name] = len(labels)
        doc = index_document(dataset=source, options={k: str(v) for k, v in options.items()},
                             channels=dataset.channels, image_size=dataset.image_size, info=dict(dataset.info),
                             splits=splits, litdata_version=lit.__version__)
        # The class index last: a staging folder that never got it is not a shard folder.
        (staging / INDEX_FILE).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return written
