"""The dataset contract: class-indexed, class-disjoint train / validation / test splits.

A :class:`ClassSplit` holds a label per sample (available without touching any
image) and an image store that returns ``uint8`` tensors ``(..., C, H, W)`` for
index tensors of any shape. Images stay ``uint8`` until they reach the device,
where the core turns them into floats in ``[0, 1]``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from metareg.dataset_info import DatasetInfo
from metareg.errors import DataError

SPLITS = ("train", "validation", "test")


class ImageStore:
    """Images addressed by integer index. Subclasses implement ``__len__`` and ``gather``."""

    def __len__(self) -> int:
        raise NotImplementedError

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """``uint8`` images of shape ``index.shape + (C, H, W)``."""
        raise NotImplementedError


class TensorImages(ImageStore):
    """All images in memory as one ``uint8`` tensor ``(N, C, H, W)``."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"TensorImages needs a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        # index_select over rows is a plain row copy, several times faster than advanced indexing
        index = torch.as_tensor(index, device=self.images.device)
        flat = self.images.index_select(0, index.reshape(-1))
        return flat.view(*index.shape, *self.images.shape[1:])


class LazyImages(ImageStore):
    """Images loaded one at a time by ``load(i) -> uint8 (C, H, W)`` (files on disk)."""

    def __init__(self, count: int, load: Callable[[int], torch.Tensor]):
        self.count, self.load = count, load

    def __len__(self) -> int:
        return self.count

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        flat = [self.load(int(i)) for i in index.reshape(-1)]
        return torch.stack(flat).view(*index.shape, *flat[0].shape)


@dataclass
class ClassSplit:
    """One split: images, an integer label per image, and the class names.

    ``labels[i]`` indexes ``classes``; class names are globally unique across the
    dataset's splits (e.g. ``"Latin/character01"``), which is how disjointness is
    checked.
    """

    images: ImageStore
    labels: torch.Tensor
    classes: Sequence[str]

    def __post_init__(self) -> None:
        if isinstance(self.images, torch.Tensor):
            self.images = TensorImages(self.images)
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"split has {len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"labels must lie in [0, {len(self.classes)}) (one per class name)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(self.classes))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FewShotDataset:
    """What a dataset factory returns; ``info`` says how its images were made (:class:`metareg.DatasetInfo`)."""

    name: str
    train: ClassSplit
    validation: ClassSplit
    test: ClassSplit
    channels: int
    image_size: int
    info: DatasetInfo = field(default_factory=DatasetInfo)

    def __post_init__(self) -> None:
        self.info = DatasetInfo.of(self.info, f"dataset {self.name!r}")
        self.check()

    def split(self, name: str) -> ClassSplit:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def check(self) -> None:
        """Refuse overlapping class sets, naming the split pair and a shared class."""
        seen: dict[str, str] = {}
        for split in SPLITS:
            for cls in self.split(split).classes:
                if cls in seen:
                    raise DataError(
                        f"dataset {self.name!r}: class {cls!r} is in both the {seen[cls]} and the {split} split; "
                        "few-shot splits must have disjoint classes"
                    )
                seen[cls] = split

    @classmethod
    def from_arrays(
        cls,
        images,
        labels,
        *,
        name: str = "arrays",
        class_names: Sequence[str] | None = None,
        splits: dict[str, Sequence[int]] | None = None,
        ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
        seed: int = 0,
        info: DatasetInfo | None = None,
    ) -> FewShotDataset:
        """Build a dataset from in-memory images and labels (numpy arrays or tensors).

        images: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` uint8 (or floats in [0, 1]).
        labels: ``(N,)`` integer class ids.
        splits: explicit class ids per split, ``{"train": [...], "validation": [...], "test": [...]}``;
            without it classes are split at random by ``ratios`` and ``seed``.
        info: what the images are (:class:`metareg.DatasetInfo`), e.g. ``DatasetInfo(imagenet_derived=True)``.
        """
        x = torch.as_tensor(images)
        y = torch.as_tensor(labels).long()
        if x.is_floating_point():
            if len(x) and (x.min() < 0 or x.max() > 1):
                raise DataError(
                    f"float images must lie in [0, 1], got values in [{float(x.min()):g}, {float(x.max()):g}]; "
                    "divide by 255 or pass uint8 images"
                )
            x = (x * 255).round().to(torch.uint8)
        elif x.dtype != torch.uint8:
            raise DataError(f"images must be uint8 (0..255) or floats in [0, 1], got {x.dtype}")
        if x.dim() == 3:
            x = x.unsqueeze(1)
        elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)
        if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
            raise DataError(f"images must be square (N, C, H, W) with 1 or 3 channels, got {tuple(x.shape)}")
        if len(x) != len(y):
            raise DataError(f"{len(x)} images but {len(y)} labels")
        if y.dim() != 1:
            raise DataError(f"labels must be one integer class id per image, got shape {tuple(y.shape)}")
        if len(y) and y.min() < 0:
            raise DataError(f"class ids must be non-negative, got {int(y.min())}")
        ids = torch.unique(y).tolist()
        if not ids:
            raise DataError("from_arrays needs at least one image")
        names = list(class_names) if class_names is not None else [str(i) for i in range(max(ids) + 1)]
        if len(names) <= max(ids):
            raise DataError(f"labels go up to {max(ids)} but only {len(names)} class_names were given")
        if splits is None:
            splits = split_classes(ids, ratios, seed)
        parts = {}
        for split in SPLITS:
            chosen = list(splits.get(split, ()))
            missing = [c for c in chosen if c not in ids]
            if missing:
                raise DataError(f"{split} split names class {missing[0]!r}, which has no images")
            lut = torch.full((max(ids) + 1,), -1, dtype=torch.long)
            lut[torch.tensor(chosen, dtype=torch.long)] = torch.arange(len(chosen))
            local = lut[y]
            mask = local >= 0
            local = local[mask]
            parts[split] = ClassSplit(x[mask].contiguous(), local, [names[c] for c in chosen])
        return cls(name, parts["train"], parts["validation"], parts["test"], x.shape[1], x.shape[2], info)


def split_classes(ids: Sequence, ratios: tuple[float, float, float], seed: int) -> dict[str, list]:
    """Split class ids into disjoint train / validation / test lists by ratio, seeded."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise DataError(f"split ratios must be three non-negative numbers, got {ratios!r}")
    ids = sorted(ids)
    g = torch.Generator().manual_seed(seed)
    order = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
    total = sum(ratios)
    n_train = int(round(len(ids) * ratios[0] / total))
    n_val = int(round(len(ids) * ratios[1] / total))
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }
