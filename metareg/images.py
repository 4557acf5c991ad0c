"""Reading image files the one way metareg does, for datasets (``imagefolder``) and ``metareg predict``.

Training data and the images a deployed model answers on must be prepared alike, so
both go through :func:`read_image`:

* decoded up front (a truncated file fails here, naming it, not mid-run); files larger
  than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb limit) are refused;
* turned upright by their EXIF orientation tag (phone photos are stored sideways);
* high-bit-depth grey images scaled, not clipped, to 8 bits: 16-bit (``I;16*`` and
  ``I``, which is how Pillow opens 16-bit PGM and TIFF files) by 255/65535, floating
  point (``F``) as intensities in [0, 1]. ``convert("L")`` clips them instead, and a
  16-bit PNG arrives almost pure white;
* transparency flattened onto white, converted to grey (``L``) or ``RGB``;
* cropped to the centre square (``crop="center"``) and resized to ``size``.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from metareg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Modes Pillow converts to both L and RGB itself.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
RESAMPLE = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
_FIX = "replace or remove the file"


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix is one of :data:`IMAGE_SUFFIXES` (any case)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _name(source) -> str:
    """How an error names an image: its path, or the ``name`` of an open binary file (an upload held in memory)."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "image"))


def _opened(path: str | os.PathLike):
    """``Image.open`` that refuses decompression bombs and unreadable files with a :class:`DataError`;
    ``path`` may also be a binary file object (``io.BytesIO`` with a ``name``), which touches no file."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{found.group(1)} pixels" if found else "too many pixels"
            raise DataError(
                f"image {_name(path)!r} has {size}, more than the limit PIL.Image.MAX_IMAGE_PIXELS = "
                f"{Image.MAX_IMAGE_PIXELS} (Pillow's guard against decompression bombs); shrink or remove the "
                "image, or raise that limit in Python if you trust the file"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise DataError(f"cannot read image {_name(path)!r}: {type(exc).__name__}: {exc}; {_FIX}") from None


def _check_mode(mode: str, name: str) -> None:
    if mode not in EIGHT_BIT_MODES and mode not in SIXTEEN_BIT_MODES and mode != "F":
        raise DataError(f"image {name!r} has Pillow mode {mode!r}, which metareg cannot turn into grey or RGB "
                        "pixels; save it as 8- or 16-bit grey, RGB or RGBA")


def check_image(path: str | os.PathLike) -> None:
    """Cheap up-front check of a file that is decoded later: readable, not a bomb, a mode metareg reads."""
    image = _opened(path)
    with image:
        _check_mode(image.mode, _name(path))
        try:
            image.verify()
        except Exception as exc:  # noqa: BLE001 - verify raises whatever the decoder raises
            raise DataError(f"cannot read image {_name(path)!r}: {type(exc).__name__}: {exc}; {_FIX}") from None


def open_image(path: str | os.PathLike):
    """The decoded, upright, 8-bit (see :func:`to_8bit`) PIL image in ``path``."""
    from PIL import ImageOps

    with _opened(path) as image:
        try:
            image.load()  # decode now: a truncated file fails here, not in the middle of a run
            upright = ImageOps.exif_transpose(image)  # a detached copy, so the file can close
        except Exception as exc:  # noqa: BLE001 - decoders raise anything from OSError to struct.error
            raise DataError(f"cannot read image {_name(path)!r}: {type(exc).__name__}: {exc}; {_FIX}") from None
    return to_8bit(upright, _name(path))


def to_8bit(image, name: str = "image"):
    """``image`` in an 8-bit mode: 16-bit grey scaled by 255/65535, float grey taken as [0, 1]; others unchanged."""
    import numpy as np
    from PIL import Image

    _check_mode(image.mode, name)
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"image {name!r} is a 32-bit integer image with values from {array.min()} to "
                            f"{array.max()}; metareg reads integer images as 16-bit (0..65535): save it as 8- or "
                            "16-bit")
        return Image.fromarray((array.astype(np.float32) * (255 / 65535)).round().astype(np.uint8), "L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise DataError(f"image {name!r} is a floating-point image with values from {array.min()} to "
                            f"{array.max()}; metareg reads float images as intensities in [0, 1]: rescale it "
                            "or save it as 8- or 16-bit")
        return Image.fromarray((array * 255).round().astype(np.uint8), "L")
    return image


def to_square_uint8(image, channels: int, size: int, resample: str = "bilinear", crop: str = "center",
                    name: str = "image"):
    """A PIL image as a uint8 tensor ``(channels, size, size)``, prepared as the module docstring says."""
    import numpy as np
    import torch
    from PIL import Image

    image = to_8bit(image, name)
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    box = None
    if crop == "center" and w != h:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    if (w, h) != (size, size):
        image = image.resize((size, size), getattr(Image.Resampling, resample.upper()), box=box)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.unsqueeze(0) if channels == 1 else array.permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike, channels: int, size: int, resample: str = "bilinear",
               crop: str = "center") -> Any:
    """The image file ``path`` as a uint8 tensor ``(channels, size, size)``; :class:`DataError` names a bad file."""
    return to_square_uint8(open_image(path), channels, size, resample, crop, os.fspath(path))
