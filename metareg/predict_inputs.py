"""What goes into a prediction: support folders, query paths and images, each checked before any model work.

Images become uint8 ``(C, S, S)`` tensors exactly as the training data were made (channels,
centre square or stretch, the dataset's resize filter: :class:`metareg.DatasetInfo`), through
:mod:`metareg.images`, the one image reader. Problems raise :class:`metareg.DataError` naming the file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metareg.errors import DataError
from metareg.images import IMAGE_SUFFIXES, open_image, to_square_uint8
from metareg.images import is_image_file as _is_image_file


def _images_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if _is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def read_support_folder(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{class name: image files}`` from ``ROOT/<class>/<image>`` (classes sorted by name).

    Counts per class may differ. Refuses a missing folder, loose images beside the
    class folders, an empty class folder and fewer than two classes.
    """
    root = Path(root)
    layout = "a folder with one subfolder of images per class: SUPPORT/<class>/<image>"
    if not root.exists():
        raise DataError(f"support folder {str(root)!r} does not exist; pass {layout}")
    if not root.is_dir():
        raise DataError(f"support path {str(root)!r} is a file, not a folder; pass {layout}")
    loose = sorted(p.name for p in root.iterdir() if _is_image_file(p))
    if loose:
        raise DataError(
            f"support folder {str(root)!r} has images directly inside it ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}); move each image into the subfolder of its class: {layout}"
        )
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    classes = {}
    for d in folders:
        files = _images_under(d)
        if not files:
            raise DataError(
                f"support class folder {str(d)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
                "add at least one image of the class or remove the folder"
            )
        classes[d.name] = files
    _check_class_count(classes, f"support folder {str(root)!r}")
    return classes


def _check_class_count(classes: Mapping[str, Any], where: str) -> None:
    if len(classes) < 2:
        found = f" ({', '.join(map(repr, classes))})" if classes else ""
        raise DataError(
            f"{where} has {len(classes)} class{'' if len(classes) == 1 else 'es'}{found}; few-shot prediction "
            "needs at least 2 classes to choose between: add a subfolder of images for each other class"
        )


def collect_queries(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Query image files from files and folders (folders are searched recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise DataError(f"query path {str(p)!r} does not exist; pass image files or folders of images")
        if p.is_dir():
            files = _images_under(p)
            if not files:
                raise DataError(f"query folder {str(p)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            out.extend(files)
        else:
            out.append(p)
    if not out:
        raise DataError("no query images given; pass image files or folders of images")
    return out


def _tensor_to_uint8(x: torch.Tensor, channels: int, size: int, name: str, resample: str, crop: str) -> torch.Tensor:
    """A tensor image goes through PIL like a file, so it is resized exactly as files are."""
    from PIL import Image

    x = torch.as_tensor(x).detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3, 4):
        raise DataError(f"{name}: an image tensor must be (H, W) or (C, H, W) with 1, 3 or 4 channels, "
                        f"got shape {tuple(x.shape)}")
    if x.is_floating_point():
        x = (x.float().clamp(0, 1) * 255).round()
    x = x.to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(x[:, :, 0] if x.shape[2] == 1 else x)  # L, RGB or RGBA
    return to_square_uint8(image, channels, size, resample, crop, name)


def load_image(item: Any, channels: int, image_size: int, name: str | None = None,
               resample: str = "bilinear", crop: str = "center") -> torch.Tensor:
    """One image (a path, a PIL image, or a tensor/array in [0, 1] or uint8) as uint8 ``(C, S, S)``."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise DataError(f"image {str(path)!r} does not exist")
        return to_square_uint8(open_image(path), channels, image_size, resample, crop, str(path))
    if isinstance(item, Image.Image):
        return to_square_uint8(item, channels, image_size, resample, crop, name or "image")
    if isinstance(item, torch.Tensor) or hasattr(item, "__array__"):
        return _tensor_to_uint8(torch.as_tensor(item), channels, image_size, name or "image", resample, crop)
    raise DataError(f"{name or 'image'}: cannot use a {type(item).__name__} as an image; "
                    "pass a file path, a PIL image or a tensor")


def describe_item(item: Any, index: int) -> str:
    """How a prediction names its input: a file's path, or a placeholder for an in-memory image."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__} #{index}>"


def expand_queries(images) -> list[Any]:
    """Query items with folders replaced by their image files; a missing path is refused."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    out = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            p = Path(item)
            if p.is_dir():
                out.extend(collect_queries([p]))
                continue
            if not p.exists():
                raise DataError(f"query path {str(p)!r} does not exist; pass image files or folders of images")
        out.append(item)
    return out


def support_items(support) -> tuple[list[str], dict[str, list[Any]]]:
    """``(class names, {class: items})`` from a support folder or a ``{class: [images]}`` mapping."""
    if isinstance(support, (str, os.PathLike)):
        items: dict[str, list[Any]] = dict(read_support_folder(support))
    elif isinstance(support, Mapping):
        items = {}
        for name, xs in support.items():
            if isinstance(xs, (str, os.PathLike)) or not isinstance(xs, Sequence) and not hasattr(xs, "__iter__"):
                xs = [xs]
            xs = list(xs)
            if not xs:
                raise DataError(f"support class {str(name)!r} has no images; give at least one image per class")
            items[str(name)] = xs
        _check_class_count(items, "support set")
    else:
        raise DataError(f"support must be a folder path or a mapping {{class name: [images]}}, "
                        f"got {type(support).__name__}")
    return list(items), items
