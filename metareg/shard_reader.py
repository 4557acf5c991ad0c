"""The ``shards`` dataset: a shard folder (:mod:`metareg.shard_format`) streamed through LitData.

What stays in memory is the class index: a label and a chunk position per image (12 bytes
each), never the images. An episode reads only the images it draws, by index, from LitData's
chunks (memory-mapped when local, downloaded chunk by chunk into ``cache_dir`` when the root is
an ``s3://`` / ``gs://`` URL); each stored item names the source image it is, checked as it is
read. Image ``i`` is image ``i`` of the dataset that was sharded, so the run's sampler draws the
same episodes as it would from that dataset in memory.
"""
from __future__ import annotations

import numpy as np
import torch

from metareg.dataset_info import DatasetInfo
from metareg.errors import DataError
from metareg.shard_format import ShardIndex, check_chunks, damaged, litdata, positions, read_index, read_labels
from metareg.splits import SPLITS, ClassSplit, FewShotDataset, ImageStore


class ShardImages(ImageStore):
    """One split's images in LitData chunks, read by index; opened lazily in each process."""

    def __init__(self, index: ShardIndex, split: str, labels: np.ndarray, cache_dir: str | None = None):
        self.root, self.split, self.folder, self.cache_dir = index.root, split, index.split_dir(split), cache_dir
        self.shape = (index.channels, index.image_size, index.image_size)
        self.labels = labels
        kind = np.int32 if len(labels) < 2**31 else np.int64
        self.position = positions(labels).astype(kind)
        self._data = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        # A spawned process (ddp_spawn, DataLoader workers) opens its own reader.
        return {**self.__dict__, "_data": None}

    def _dataset(self):
        if self._data is None:
            lit = litdata()
            try:
                # batch_decode=0: an episode reads scattered items; decoding a whole window per item wastes it.
                self._data = lit.StreamingDataset(self.folder, cache_dir=self.cache_dir or None, batch_decode=0)
            except (ValueError, OSError) as exc:
                raise damaged(self.root, f"LitData cannot open {self.split}/ ({type(exc).__name__}: {exc})") from None
        return self._data

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        flat = index.reshape(-1).numpy()
        out = np.empty((len(flat), *self.shape), dtype=np.uint8)
        if len(flat):
            where = self.position[flat]
            data = self._dataset()
            for k in np.argsort(where, kind="stable").tolist():  # chunk by chunk
                source, want = int(flat[k]), int(self.labels[flat[k]])
                try:
                    item = data[int(where[k])]
                    image, label, stored = item["image"], item["label"], item["index"]
                except Exception as exc:  # noqa: BLE001 - any decoding failure is a damaged chunk: one line
                    raise damaged(self.root, f"{self.split} image {int(where[k])} is unreadable "
                                             f"({type(exc).__name__}: {exc})") from None
                # Each item names the source image it is: a chunk or labels file swapped or reordered is caught here.
                if (stored, label) != (source, want) or getattr(image, "shape", None) != self.shape \
                        or image.dtype != np.uint8:
                    raise damaged(self.root, f"{self.split} image {int(where[k])} is source image {stored} of label "
                                             f"{label}, {getattr(image, 'dtype', '?')} {getattr(image, 'shape', '?')};"
                                             f" the class index expects image {source} of label {want}, uint8 "
                                             f"{self.shape}")
                out[k] = image
        return torch.from_numpy(out).view(*index.shape, *self.shape)


def _empty(shape) -> ImageStore:
    from metareg.splits import TensorImages

    return TensorImages(torch.empty((0, *shape), dtype=torch.uint8))


def shards(*, root: str = "", cache_dir: str = "") -> FewShotDataset:
    """A dataset written by `metareg shard`, streamed from its shards: memory holds the class index, not the images.

    root: the folder `metareg shard DATASET OUT_DIR` wrote, or its copy in object storage (s3://bucket/path).
    cache_dir: where LitData keeps chunks downloaded from object storage (default: LitData's cache).
    """
    index = read_index(root, cache_dir=cache_dir or None)
    parts = {}
    for split in SPLITS:
        check_chunks(index, split)
        labels = read_labels(index, split, cache_dir=cache_dir or None)
        shape = (index.channels, index.image_size, index.image_size)
        store = ShardImages(index, split, labels, cache_dir or None) if len(labels) else _empty(shape)
        parts[split] = ClassSplit(store, torch.from_numpy(labels), list(index.splits[split].classes))
    try:
        info = DatasetInfo.from_saved({**index.info, "shards": f"{index.dataset} from {index.root}"})
    except DataError as exc:
        raise damaged(index.root, f"its DatasetInfo is invalid ({exc})") from None
    return FewShotDataset("shards", parts["train"], parts["validation"], parts["test"], index.channels,
                          index.image_size, info)
