"""The shard folder `metareg shard` writes and the ``shards`` dataset reads: its layout and its checks.

::

    OUT_DIR/metareg-shards.json   the class index: source dataset and options, image shape,
                                  DatasetInfo, per split the class names and images per class
    OUT_DIR/labels/<split>.npy    one int64 label per image, in the source dataset's order
    OUT_DIR/<split>/              a LitData dataset (index.json, chunk-*.bin): one item per image,
                                  {"image": uint8 (C, H, W), "label": int, "index": int
                                  (the image's index in the source)}, class by class

Images are stored class by class (a stable sort of the labels), so that an episode's few
classes touch few chunks (what matters when chunks come from object storage), while the
labels file keeps the source's order: image ``i`` of the source is image ``i`` of the
``shards`` dataset, so the episode sampler draws the same indices, and the same images, as
from the dataset in memory. Where image ``i`` sits in the chunks follows from the labels alone
(:func:`positions`), so no separate permutation is stored.

Everything here that reads LitData imports it lazily: ``metareg list`` never pays for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metareg.errors import ConfigError, DataError

INDEX_FILE = "metareg-shards.json"
FORMAT = "metareg-shards"
VERSION = 1
REMOTE_SCHEMES = ("s3://", "gs://", "r2://")
INSTALL_HINT = "pip install 'metareg-core[shards]' (LitData)"


def litdata():
    """The LitData module, or one line saying how to install it."""
    # Its PyPI version check is off by default; keep it off so that reading shards never waits on the network.
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    try:
        import litdata as module
    except ImportError:
        raise ConfigError(f"shards need LitData, which is not installed: {INSTALL_HINT}") from None
    return module


def is_remote(root: str) -> bool:
    return str(root).startswith(REMOTE_SCHEMES)


def damaged(root: str, what: str) -> DataError:
    return DataError(f"shard folder {root}: {what}; the folder is damaged or incomplete: write it again with "
                     f"`metareg shard DATASET {root}`")


@dataclass(frozen=True)
class SplitIndex:
    name: str
    classes: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def samples(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class ShardIndex:
    """``metareg-shards.json`` read and checked; ``root`` is a local folder or an object-storage URL."""

    root: str
    dataset: str
    options: dict[str, Any]
    channels: int
    image_size: int
    info: dict[str, Any]
    splits: dict[str, SplitIndex]

    def split_dir(self, split: str) -> str:
        return f"{self.root.rstrip('/')}/{split}"

    def labels_file(self, split: str) -> str:
        return f"{self.root.rstrip('/')}/labels/{split}.npy"


def index_document(*, dataset: str, options: dict, channels: int, image_size: int, info: dict,
                   splits: dict[str, SplitIndex], litdata_version: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "dataset": dataset, "options": options, "channels": channels,
            "image_size": image_size, "info": info, "litdata": litdata_version,
            "splits": {s.name: {"classes": list(s.classes), "counts": list(s.counts)} for s in splits.values()}}


def positions(labels: np.ndarray) -> np.ndarray:
    """Where image ``i`` (source order) sits in the class-by-class chunks: the inverse of a stable label sort."""
    order = np.argsort(labels, kind="stable")
    where = np.empty(len(labels), dtype=np.int64)
    where[order] = np.arange(len(labels), dtype=np.int64)
    return where


def class_order(labels: np.ndarray) -> np.ndarray:
    """Source indices in the order the writer stores them: class by class, source order within a class."""
    return np.argsort(labels, kind="stable")


def _fetch(root: str, path: str, cache_dir: str | None) -> Path:
    """A local copy of a small file of a remote shard folder, through LitData's object-storage clients."""
    litdata()
    from litdata.streaming.fs_provider import _get_fs_provider  # the clients StreamingDataset itself uses

    key = hashlib.blake2b(root.encode(), digest_size=6).hexdigest()  # one copy per remote folder, reused
    local_dir = Path(cache_dir) / "index" if cache_dir else Path(tempfile.gettempdir()) / f"metareg-shards-{key}"
    local = local_dir / path.removeprefix(root.rstrip("/") + "/")
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        _get_fs_provider(path).download_file(path, str(local))
    except Exception as exc:  # noqa: BLE001 - any client error (credentials, network, missing key) is one line
        raise DataError(f"shard folder {root}: cannot fetch {path}: {type(exc).__name__}: {exc}") from None
    return local


def _local(root: str, path: str, cache_dir: str | None) -> Path:
    return _fetch(root, path, cache_dir) if is_remote(root) else Path(path)


def read_index(root: str | os.PathLike, *, cache_dir: str | None = None) -> ShardIndex:
    """The checked class index of a shard folder; one :class:`DataError` line for anything wrong."""
    root = str(root)
    if not root:
        raise DataError("shards: give the folder `metareg shard` wrote: --dataset-opt root=DIR (or an s3:// URL)")
    if not is_remote(root):
        if not Path(root).is_dir():
            raise DataError(f"shards: {root} is not a folder; give the folder `metareg shard DATASET {root}` wrote")
        if not (Path(root) / INDEX_FILE).is_file():
            raise DataError(f"shards: {root} is not a shard folder (it has no {INDEX_FILE}); write one with "
                            f"`metareg shard DATASET OUT_DIR`")
    try:
        doc = json.loads(_local(root, f"{root.rstrip('/')}/{INDEX_FILE}", cache_dir).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(root, f"{INDEX_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise damaged(root, f"{INDEX_FILE} is not a metareg shard index")
    if doc.get("version") != VERSION:
        raise DataError(f"shard folder {root}: format version {doc.get('version')!r}, this metareg reads {VERSION}; "
                        f"write it again with this metareg's `metareg shard`")
    try:
        splits = {name: SplitIndex(name, tuple(map(str, s["classes"])), tuple(int(c) for c in s["counts"]))
                  for name, s in doc["splits"].items()}
        index = ShardIndex(root, str(doc["dataset"]), dict(doc["options"]), int(doc["channels"]),
                           int(doc["image_size"]), dict(doc["info"]), splits)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(root, f"{INDEX_FILE} lacks or mangles {exc}") from None
    for split in ("train", "validation", "test"):
        if split not in splits:
            raise damaged(root, f"{INDEX_FILE} has no {split} split")
        if len(splits[split].classes) != len(splits[split].counts):
            raise damaged(root, f"{INDEX_FILE}: {split} names {len(splits[split].classes)} classes but counts "
                                f"{len(splits[split].counts)}")
    return index


def read_labels(index: ShardIndex, split: str, *, cache_dir: str | None = None) -> np.ndarray:
    """The split's labels (source order), checked against the class index; never unpickled."""
    want = index.splits[split]
    path = index.labels_file(split)
    try:
        labels = np.load(_local(index.root, path, cache_dir), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise damaged(index.root, f"labels/{split}.npy is unreadable ({type(exc).__name__}: {exc})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != want.samples:
        raise damaged(index.root, f"labels/{split}.npy holds {labels.dtype} {labels.shape}, the index says "
                                  f"{want.samples} integer labels")
    negative = len(labels) and labels.min() < 0
    counts = () if negative else tuple(np.bincount(labels, minlength=len(want.classes)).tolist())
    if counts != want.counts:
        raise damaged(index.root, f"labels/{split}.npy does not match the images per class in {INDEX_FILE}")
    return labels.astype(np.int64, copy=False)


def check_chunks(index: ShardIndex, split: str) -> None:
    """LitData's index of a split agrees with the class index; local chunk files exist at their recorded size.

    Sizes only (no read of the images): opening stays cheap whatever the dataset's size.
    """
    want = index.splits[split].samples
    if want == 0 or is_remote(index.root):  # a remote folder's chunks are checked by LitData as they arrive
        return
    folder = Path(index.split_dir(split))
    try:
        chunks = json.loads((folder / "index.json").read_text())["chunks"]
        held = sum(int(c["chunk_size"]) for c in chunks)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(index.root, f"{split}/index.json is missing or unreadable ({type(exc).__name__})") from None
    if held != want:
        raise damaged(index.root, f"{split}/index.json lists {held} images, the class index {want}")
    for chunk in chunks:
        path = folder / str(chunk["filename"])
        size = path.stat().st_size if path.is_file() else None
        if size != int(chunk["chunk_bytes"]):
            found = "missing" if size is None else f"{size} bytes"
            raise damaged(index.root, f"{split}/{chunk['filename']} is {found}, its index says {chunk['chunk_bytes']}")
