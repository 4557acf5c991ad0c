"""The dataset contract check."""
from __future__ import annotations

from typing import Any

import torch

from metareg import kinds
from metareg.testing.harness import build, require, resolve_with_options


def check_dataset(
    factory_or_name_or_dataset: Any,
    *,
    options: dict[str, Any] | None = None,
    classes: dict[str, int] | None = None,
    min_samples_per_class: int = 1,
    samples: int = 4,
) -> Any:
    """Build the dataset (or take a built :class:`metareg.FewShotDataset`) and check the contract.

    Checks: three splits with globally unique, pairwise disjoint class names; labels a
    1-D long tensor in ``[0, len(classes))`` known without loading any image (the image
    store is not touched until samples are drawn); every class has at least
    ``min_samples_per_class`` samples; ``channels`` in (1, 3) and a positive
    ``image_size``; gathering index tensors of any shape returns ``uint8`` images of
    ``index.shape + (C, H, W)``. ``classes`` optionally gives the expected number of
    classes per split, e.g. ``{"train": 64, "validation": 16, "test": 20}``.
    Returns the dataset.
    """
    from metareg.splits import SPLITS, ClassSplit, FewShotDataset, ImageStore

    if isinstance(factory_or_name_or_dataset, FewShotDataset):
        ds, label = factory_or_name_or_dataset, f"dataset {factory_or_name_or_dataset.name!r}"
    else:
        factory, label, declared = resolve_with_options(kinds.DATASET.plural, factory_or_name_or_dataset)
        options = declared if options is None else options
        ds = build(factory, label, options, kinds.DATASET)
        require(
            isinstance(ds, FewShotDataset),
            label,
            f"factory must return a metareg.FewShotDataset, got {type(ds).__name__}",
        )
    gathered = [0]
    require(ds.channels in (1, 3), label, f"channels must be 1 or 3, got {ds.channels!r}")
    require(isinstance(ds.image_size, int) and ds.image_size > 0, label, f"bad image_size {ds.image_size!r}")

    # Count image loads while the label-only checks run: they must not touch images.
    patched = []
    for split in SPLITS:
        store = ds.split(split).images
        if any(store is other for other in patched):
            continue

        def counting(index, _orig=store.gather):
            gathered[0] += 1
            return _orig(index)

        store.gather = counting
        patched.append(store)
    try:
        owner: dict[str, str] = {}
        for split in SPLITS:
            part = ds.split(split)
            where = f"{label}, {split} split"
            require(isinstance(part, ClassSplit), where, f"must be a metareg.ClassSplit, got {type(part).__name__}")
            require(isinstance(part.images, ImageStore), where, "images must be a metareg.ImageStore")
            names = list(part.classes)
            require(len(names) >= 2, where, f"has {len(names)} classes; episodes need at least 2")
            require(len(set(names)) == len(names), where, "class names repeat within the split")
            for n in names:
                require(isinstance(n, str), where, f"class names must be strings, got {n!r}")
                require(n not in owner, label, f"class {n!r} is in both the {owner.get(n)} and {split} splits")
                owner[n] = split
            y = part.labels
            require(
                isinstance(y, torch.Tensor) and y.dtype == torch.long and y.dim() == 1,
                where,
                f"labels must be a 1-D long tensor, got {getattr(y, 'dtype', type(y))} "
                f"{tuple(getattr(y, 'shape', ()))}",
            )
            require(len(y) == len(part.images), where, f"{len(y)} labels for {len(part.images)} images")
            require(bool(((y >= 0) & (y < len(names))).all()), where, f"labels outside [0, {len(names)})")
            counts = torch.bincount(y, minlength=len(names))
            low = int(counts.argmin())
            require(
                int(counts[low]) >= min_samples_per_class,
                where,
                f"class {names[low]!r} has {int(counts[low])} samples, fewer than {min_samples_per_class}",
            )
            if classes and split in classes:
                require(
                    len(names) == classes[split],
                    where,
                    f"has {len(names)} classes, expected {classes[split]}",
                )
        require(gathered[0] == 0, label, "reading labels and classes loaded images (labels must not need images)")
    finally:
        for store in patched:
            del store.gather

    g = torch.Generator().manual_seed(0)
    shape = (ds.channels, ds.image_size, ds.image_size)
    for split in SPLITS:
        part = ds.split(split)
        where = f"{label}, {split} split"
        picks = [0, len(part) - 1, *torch.randint(len(part), (max(samples - 2, 0),), generator=g).tolist()]
        index = torch.tensor(picks[: max(samples, 2) // 2 * 2], dtype=torch.long)
        for idx in (index, index.view(2, -1)):
            try:
                images = part.images.gather(idx)
            except Exception as exc:  # noqa: BLE001 - report which samples failed to load
                raise AssertionError(
                    f"{where}: loading samples {idx.tolist()} failed: {type(exc).__name__}: {exc}"
                ) from exc
            expected = (*idx.shape, *shape)
            require(
                isinstance(images, torch.Tensor) and tuple(images.shape) == expected,
                where,
                f"gather of index shape {tuple(idx.shape)} returned {tuple(getattr(images, 'shape', ()))}, "
                f"expected {expected}",
            )
            require(images.dtype == torch.uint8, where, f"images must be uint8, got {images.dtype}")
    return ds
