"""learn2learn's vision benchmark datasets as :class:`metareg.FewShotDataset`.

Each factory builds learn2learn's own dataset class once per split (so its file
layout, split definitions and download logic are used as they are; ``download=True``
only when asked), with every pickle it reads going through
:func:`metareg.restricted_load`. Labels come from learn2learn's bookkeeping without
decoding any image; images are decoded on demand, converted to ``uint8`` and resized
to ``image_size``.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metareg

from ._l2l import learn2learn, restricted_pickle

SPLITS = ("train", "validation", "test")


def _root(root: str | None, folder: str) -> Path:
    if root:
        return Path(root).expanduser()
    base = os.environ.get("METAREG_CACHE_DIR")
    if base:
        return Path(base) / "learn2learn" / folder
    import platformdirs

    return Path(platformdirs.user_cache_dir("metareg")) / "learn2learn" / folder


def _to_uint8(image: Any, channels: int, size: int) -> torch.Tensor:
    """A PIL image, array or tensor -> uint8 (channels, size, size)."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)
        image = array
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            image = np.clip(image * (255 if image.max() <= 1 else 1), 0, 255).astype(np.uint8)
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _labels_of(ds: Any, name: str) -> list[int]:
    """learn2learn's per-sample labels, read from its bookkeeping (no image is decoded)."""
    if hasattr(ds, "indices_to_labels"):  # quickdraw, fungi
        mapping = ds.indices_to_labels
        return [int(mapping[i]) for i in range(len(ds))]
    if hasattr(ds, "samples") and hasattr(ds, "targets"):  # ImageFolder (cifarfs)
        return [int(t) for t in ds.targets]
    data = getattr(ds, "data", None)
    if isinstance(data, list) and data and isinstance(data[0], tuple):  # cub, dtd, aircraft, flowers
        return [int(item[1]) for item in data]
    labels = getattr(ds, "labels", None)  # fc100, tiered
    if labels is not None:
        return [int(v) for v in np.asarray(labels).reshape(-1)]
    raise metareg.DataError(f"{name}: cannot read labels from learn2learn's {type(ds).__name__} without images")


def _split(
    ds: Any,
    labels: Sequence[int],
    names: Callable[[int], str],
    channels: int,
    size: int,
    load: Callable[[int], Any] | None = None,
) -> metareg.ClassSplit:
    ids = sorted(set(labels))
    local = {c: i for i, c in enumerate(ids)}
    fetch = load or (lambda i: ds[i][0])
    return metareg.ClassSplit(
        metareg.LazyImages(len(labels), lambda i: _to_uint8(fetch(i), channels, size)),
        torch.tensor([local[v] for v in labels], dtype=torch.long),
        [names(c) for c in ids],
    )


def _construct(name: str, cls: type, root: Path, download: bool, split: str | None, **kwargs: Any) -> Any:
    module = sys.modules[cls.__module__]
    args = dict(root=str(root), download=download, **kwargs)
    if split is not None:
        args["mode"] = split
    if download:
        root.mkdir(parents=True, exist_ok=True)  # several learn2learn classes call os.mkdir(root), not makedirs
    try:
        with restricted_pickle(module):
            return cls(**args)
    except metareg.DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - learn2learn raises anything from OSError to IndexError
        hint = "" if download else " Put the files there, or pass --dataset-opt download=true to fetch them."
        raise metareg.DataError(
            f"{name}: learn2learn's {cls.__name__} could not read the {split or 'whole'} dataset under {root} "
            f"({type(exc).__name__}: {exc}).{hint}"
        ) from exc


def _by_mode(
    name: str,
    class_name: str,
    *,
    root: str | None,
    download: bool,
    channels: int,
    image_size: int,
    folder: str,
    imagenet_derived: bool = False,
    **kwargs: Any,
) -> metareg.FewShotDataset:
    if image_size < 8:
        raise metareg.OptionError(f"{name}: image_size must be at least 8, got {image_size}")
    cls = getattr(learn2learn().vision.datasets, class_name)
    base = _root(root, folder)
    parts = {}
    for split in SPLITS:
        ds = _construct(name, cls, base, download, split, **kwargs)
        labels = _labels_of(ds, name)
        classes = getattr(ds, "classes", None)  # ImageFolder knows the class folder names

        def names(c: int, _split: str = split, _classes: Any = classes) -> str:
            return str(_classes[c]) if _classes is not None else f"{_split}/{c:04d}"

        parts[split] = _split(ds, labels, names, channels, image_size)
    info = metareg.DatasetInfo(imagenet_derived=imagenet_derived,
                               details={"source": f"learn2learn.vision.datasets.{class_name}", "root": str(base)})
    return metareg.FewShotDataset(name, parts["train"], parts["validation"], parts["test"], channels, image_size, info)


def mini_imagenet(*, root: str | None = None, download: bool = False) -> metareg.FewShotDataset:
    """miniImageNet (Ravi & Larochelle split) from learn2learn's mini-imagenet-cache-<split>.pkl files.

    root: folder holding mini-imagenet-cache-{train,validation,test}.pkl
        (default: $METAREG_CACHE_DIR/learn2learn/mini-imagenet).
    download: let learn2learn fetch missing files (about 3 GB); they are read with metareg's restricted unpickler.
    """
    name = "l2l-miniimagenet"
    l2l = learn2learn()
    base = _root(root, "mini-imagenet")
    parts = {}
    for split in SPLITS:
        path = base / f"mini-imagenet-cache-{split}.pkl"
        if not path.is_file():
            if not download:
                raise metareg.DataError(
                    f"{name}: {path} not found. Put learn2learn's mini-imagenet-cache-*.pkl files in {base}, "
                    "or pass --dataset-opt download=true"
                )
            # learn2learn downloads, then unpickles (through the restricted loader) and converts to float;
            # we read the file again ourselves to keep the images as uint8.
            _construct(name, l2l.vision.datasets.MiniImagenet, base, True, split)
        data = metareg.restricted_load(path)
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            raise metareg.DataError(f"{name}: {path} is not a mini-imagenet cache (needs image_data and class_dict)")
        images = np.asarray(data["image_data"])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise metareg.DataError(f"{name}: {path}: image_data must be uint8 (N, H, W, 3), got {images.shape}")
        if not isinstance(data["class_dict"], dict) or not data["class_dict"]:
            raise metareg.DataError(f"{name}: {path}: class_dict must be a non-empty dict {{class: [indices]}}; "
                                    "the file is damaged: delete it and download it again")
        classes = list(data["class_dict"])
        labels = np.full(len(images), -1, dtype=np.int64)
        for c, cls in enumerate(classes):
            idx = np.asarray(data["class_dict"][cls]).reshape(-1)
            # a negative index would silently wrap around, a too large one raise IndexError
            if len(idx) and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= len(images)):
                raise metareg.DataError(
                    f"{name}: {path}: class {cls!r} lists image indices outside [0, {len(images)}) (the file holds "
                    f"{len(images)} images); the file is damaged: delete it and download it again"
                )
            idx = idx.astype(np.int64)  # an empty list arrives as float64
            if (labels[idx] >= 0).any():
                raise metareg.DataError(f"{name}: {path}: class {cls!r} shares images with another class; the file "
                                        "is damaged: delete it and download it again")
            labels[idx] = c
        if (labels < 0).any():
            raise metareg.DataError(f"{name}: {path}: {int((labels < 0).sum())} images belong to no class")
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        parts[split] = metareg.ClassSplit(tensor, torch.from_numpy(labels), classes)
    size = parts["train"].images.gather(torch.tensor([0])).shape[-1]
    # miniImageNet's classes are ImageNet classes: ImageNet-pretrained weights have seen its test classes.
    info = metareg.DatasetInfo(imagenet_derived=True,
                               details={"source": "learn2learn.vision.datasets.MiniImagenet", "root": str(base)})
    return metareg.FewShotDataset(name, parts["train"], parts["validation"], parts["test"], 3, size, info)


def tiered_imagenet(*, root: str | None = None, download: bool = False, image_size: int = 84) -> metareg.FewShotDataset:
    """tieredImageNet from learn2learn's tiered-imagenet/<split>_images_png.pkl and <split>_labels.pkl.

    root: folder that holds tiered-imagenet/ (default: $METAREG_CACHE_DIR/learn2learn/tiered-imagenet).
    download: let learn2learn fetch the archive (12 GB) when missing.
    image_size: images are resized to image_size x image_size.
    """
    return _by_mode(
        "l2l-tieredimagenet", "TieredImagenet", root=root, download=download, channels=3, image_size=image_size,
        folder="tiered-imagenet", imagenet_derived=True,
    )


def cifarfs(*, root: str | None = None, download: bool = False, image_size: int = 32) -> metareg.FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 classes split 64/16/20.

    root: folder that holds cifarfs/ (learn2learn processes it into cifarfs/processed/{train,val,test}/<class>/).
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size (32 is native).
    """
    return _by_mode(
        "l2l-cifarfs", "CIFARFS", root=root, download=download, channels=3, image_size=image_size, folder="cifarfs"
    )


def fc100(*, root: str | None = None, download: bool = False, image_size: int = 32) -> metareg.FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60/20/20 classes.

    root: folder holding FC100_{train,val,test}.pickle (read with metareg's restricted unpickler).
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size (32 is native).
    """
    return _by_mode(
        "l2l-fc100", "FC100", root=root, download=download, channels=3, image_size=image_size, folder="fc100"
    )


def cub200(
    *, root: str | None = None, download: bool = False, image_size: int = 84, bounding_box_crop: bool = False
) -> metareg.FewShotDataset:
    """CUB-200-2011 birds with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's CUB files.
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size.
    bounding_box_crop: crop each bird to its annotated bounding box.
    """
    return _by_mode(
        "l2l-cub", "CUBirds200", root=root, download=download, channels=3, image_size=image_size, folder="cub",
        bounding_box_crop=bounding_box_crop,
    )


def aircraft(
    *, root: str | None = None, download: bool = False, image_size: int = 84, bounding_box_crop: bool = False
) -> metareg.FewShotDataset:
    """FGVC-Aircraft variants with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's FGVC-Aircraft files.
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size.
    bounding_box_crop: crop each aircraft to its annotated bounding box.
    """
    return _by_mode(
        "l2l-aircraft", "FGVCAircraft", root=root, download=download, channels=3, image_size=image_size,
        folder="aircraft", bounding_box_crop=bounding_box_crop,
    )


def vgg_flowers(*, root: str | None = None, download: bool = False, image_size: int = 84) -> metareg.FewShotDataset:
    """VGG Flowers 102 with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's VGG Flowers files.
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size.
    """
    return _by_mode(
        "l2l-vggflowers", "VGGFlower102", root=root, download=download, channels=3, image_size=image_size,
        folder="vgg-flowers",
    )


def dtd(*, root: str | None = None, download: bool = False, image_size: int = 84) -> metareg.FewShotDataset:
    """Describable Textures with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's DTD files.
    download: let learn2learn fetch the archive when missing.
    image_size: images are resized to image_size x image_size.
    """
    return _by_mode(
        "l2l-dtd", "DescribableTextures", root=root, download=download, channels=3, image_size=image_size,
        folder="dtd",
    )


def quickdraw(*, root: str | None = None, download: bool = False, image_size: int = 28) -> metareg.FewShotDataset:
    """Quickdraw 28x28 sketches with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's Quickdraw .npy files.
    download: let learn2learn fetch them (needs the gsutil command: pip install gsutil).
    image_size: images are resized to image_size x image_size (28 is native).
    """
    return _by_mode(
        "l2l-quickdraw", "Quickdraw", root=root, download=download, channels=1, image_size=image_size,
        folder="quickdraw",
    )


def fungi(*, root: str | None = None, download: bool = False, image_size: int = 84) -> metareg.FewShotDataset:
    """FGVCx Fungi 2018 with the splits of Triantafillou et al. (2020).

    root: folder for learn2learn's Fungi files.
    download: let learn2learn fetch the archives when missing (about 13 GB).
    image_size: images are resized to image_size x image_size.
    """
    return _by_mode(
        "l2l-fungi", "FGVCFungi", root=root, download=download, channels=3, image_size=image_size, folder="fungi"
    )


def omniglot(
    *, root: str | None = None, download: bool = False, image_size: int = 28, seed: int = 0
) -> metareg.FewShotDataset:
    """Full Omniglot (background + evaluation, 1623 characters) split 1100/100/423 at random, as learn2learn does.

    root: folder holding torchvision's omniglot-py/images_background and images_evaluation.
    download: let torchvision fetch the two archives when missing.
    image_size: images are resized to image_size x image_size (105 is native, 28 is usual).
    seed: seed of the class split.
    """
    name = "l2l-omniglot"
    if image_size < 8:
        raise metareg.OptionError(f"{name}: image_size must be at least 8, got {image_size}")
    l2l = learn2learn()
    base = _root(root, "omniglot")
    ds = _construct(name, l2l.vision.datasets.FullOmniglot, base, download, None)
    background, evaluation = ds.dataset.datasets
    offset = len(background._characters)
    labels = [c for _, c in background._flat_character_images]
    labels += [c + offset for _, c in evaluation._flat_character_images]
    characters = [*background._characters, *evaluation._characters]
    total = len(characters)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train, n_val = round(total * 1100 / 1623), round(total * 100 / 1623)
    chosen = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    parts = {}
    for split, ids in chosen.items():
        wanted = set(ids)
        index = [i for i, c in enumerate(labels) if c in wanted]
        parts[split] = _split(
            ds, [labels[i] for i in index], lambda c: characters[c], 1, image_size, lambda j, _ix=index: ds[_ix[j]][0]
        )
    info = metareg.DatasetInfo(
        details={"source": "learn2learn.vision.datasets.FullOmniglot", "root": str(base), "seed": seed})
    return metareg.FewShotDataset(name, parts["train"], parts["validation"], parts["test"], 1, image_size, info)
