"""Augmentation chains: Kornia augmentations applied to whole batches on the device.

Every chain is a :class:`KorniaTransform` with three stages::

    training:   prepare -> augment -> normalize
    evaluation: prepare ->            normalize

``prepare`` fixes the size (a resize, so training and evaluation batches match),
``augment`` is an ``nn.Sequential`` of ``kornia.augmentation`` modules (each draws
its own random parameters per image: ``same_on_batch=False``), and ``normalize``
subtracts a mean and divides by a standard deviation (buffers, so they follow
``.to(device)``).

Randomness comes from torch's global generator, so ``torch.manual_seed(s)`` before
a call reproduces the augmented batch (Lightning's ``seed_everything`` covers it).

Grayscale (1-channel) images: saturation and hue are undefined on gray images and
Kornia's hue/saturation ops require 3 channels, so the colour-jitter steps keep
brightness and contrast and skip saturation and hue.

Half-precision batches are augmented in float32 and cast back: several Kornia
ops (grid sampling, colour conversions) are not implemented or not accurate in
bf16/fp16.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

import metareg

# MetaOptNet's (Lee et al. 2019) miniImageNet statistics, the usual few-shot normalisation.
MINIIMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
MINIIMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        return f"mean={mean}, std={[round(v, 4) for v in self.std.flatten().tolist()]}"


class KorniaTransform(metareg.Transform):
    """A Transform made of a ``prepare`` stage, a Kornia ``augment`` chain and a ``normalize`` stage."""

    def __init__(
        self,
        augment: nn.Module,
        prepare: nn.Module | None = None,
        normalize: nn.Module | None = None,
        eval_prepare: nn.Module | None = None,
    ):
        super().__init__()
        self.prepare = prepare if prepare is not None else nn.Identity()
        self.augment = augment
        self.normalize = normalize if normalize is not None else nn.Identity()
        # Evaluation's own size fix when augmenting changes the size (a crop to a fixed size).
        self.eval_prepare = eval_prepare if eval_prepare is not None else self.prepare

    @staticmethod
    def _float(images: torch.Tensor) -> torch.Tensor:
        return images if images.dtype in (torch.float32, torch.float64) else images.float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.augment(self.prepare(self._float(images)))
        return self.normalize(x).to(images.dtype)

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.eval_prepare(self._float(images))).to(images.dtype)


def _check_p(name: str, **values: float) -> None:
    for key, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise metareg.OptionError(f"{name}: {key} is a probability and must be in [0, 1], got {value}")


def _size(name: str, size: int | None, image_size: int) -> int:
    if size is None:
        return image_size
    if size < 1:
        raise metareg.OptionError(f"{name}: size must be a positive number of pixels, got {size}")
    return size


def _normalize(name: str, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Normalize:
    """The given statistics, or MetaOptNet's miniImageNet ones (averaged to one value for non-RGB data)."""
    if mean is None:
        mean = MINIIMAGENET_MEAN if channels == 3 else (sum(MINIIMAGENET_MEAN) / 3,) * channels
    if std is None:
        std = MINIIMAGENET_STD if channels == 3 else (sum(MINIIMAGENET_STD) / 3,) * channels
    mean, std = list(mean), list(std)
    if len(mean) == 1 and channels > 1:
        mean = mean * channels
    if len(std) == 1 and channels > 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        raise metareg.OptionError(
            f"{name}: mean and std need one value per channel ({channels}) or a single value, "
            f"got mean={mean}, std={std}"
        )
    if any(s <= 0 for s in std):
        raise metareg.OptionError(f"{name}: std values must be positive, got {std}")
    return Normalize(mean, std)


def _resize(size: int, image_size: int) -> nn.Module:
    import kornia.augmentation as K

    return K.Resize((size, size)) if size != image_size else nn.Identity()


def _colour_jitters(channels: int, p: float, *, brightness: float, contrast: float, saturation: float, hue: float,
                    separate: bool) -> list[nn.Module]:
    """Colour jitter for ``channels`` (saturation and hue dropped on non-RGB images).

    ``separate``: one ColorJitter per property, each with probability ``p`` (Flash's chain);
    otherwise a single ColorJitter of all of them.
    """
    import kornia.augmentation as K

    if channels != 3:
        saturation = hue = 0.0
    parts = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
    parts = {k: v for k, v in parts.items() if v > 0}
    if not parts or p == 0:
        return []
    if separate:
        return [K.ColorJitter(**{k: v}, p=p) for k, v in parts.items()]
    return [K.ColorJitter(**parts, p=p)]


def flash(
    *,
    channels: int = 3,
    image_size: int = 84,
    p: float = 0.25,
    size: int | None = None,
    strength: float = 1.0,
) -> metareg.Transform:
    """The chain of Lightning Flash's meta-learning example: resize, flip, rotation, affine, perspective,
    four colour jitters, motion blur and erasing, each applied with probability p.

    p: probability of each augmentation (0.25 in Flash's example).
    size: resize images to size x size pixels before augmenting, for training and evaluation alike
        (Flash's example used 196); default: keep the dataset's image size.
    strength: scales every magnitude (rotation, shear, translation, distortion, jitter); 1 is Flash's chain.
    """
    import kornia.augmentation as K

    _check_p("flash", p=p)
    size = _size("flash", size, image_size)
    if strength < 0:
        raise metareg.OptionError(f"flash: strength must be >= 0, got {strength}")
    s = strength
    augment = [
        # spatial
        K.RandomHorizontalFlip(p=p),
        K.RandomRotation(degrees=90.0 * s, p=p),
        K.RandomAffine(degrees=5.0 * s, translate=(s / 20, s / 20), shear=s / 5, p=p),
        K.RandomPerspective(distortion_scale=min(s / 25, 1.0), p=p),
        # pixel-level: one jitter per property, as in Flash's example
        *_colour_jitters(channels, p, brightness=s / 30, contrast=s / 30, saturation=s / 30, hue=min(s / 30, 0.5),
                         separate=True),
        K.RandomMotionBlur(kernel_size=3, angle=1.0 * s, direction=1.0, p=p),
        K.RandomErasing(scale=(1 / 100, 1 / 50), ratio=(1 / 20, 1.0), p=p),
    ]
    return KorniaTransform(nn.Sequential(*augment), prepare=_resize(size, image_size))


def lee2019(
    *,
    channels: int = 3,
    image_size: int = 84,
    crop: Literal["padded", "resized", "none"] = "padded",
    padding: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    flip_p: float = 0.5,
    jitter: float = 0.4,
    jitter_p: float = 1.0,
    normalize: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> metareg.Transform:
    """The standard few-shot chain (MetaOptNet, Lee et al. 2019): random crop, horizontal flip, colour jitter 0.4,
    normalisation; evaluation normalises only.

    crop: padded (random crop after zero-padding by `padding`, MetaOptNet), resized (random resized crop with
        area `scale`, as in many later papers) or none.
    padding: pixels of padding for crop=padded; default: a tenth of the image size (8 for 84x84, as MetaOptNet).
    scale: range of the cropped area fraction for crop=resized.
    flip_p: probability of a horizontal flip.
    jitter: brightness, contrast and saturation jitter strength (0 disables; saturation skipped on grayscale).
    jitter_p: probability of the colour jitter.
    normalize: subtract `mean` and divide by `std` in training and evaluation.
    mean: per-channel means (or one value); default: MetaOptNet's miniImageNet statistics.
    std: per-channel standard deviations (or one value); default: MetaOptNet's miniImageNet statistics.
    """
    import kornia.augmentation as K

    _check_p("lee2019", flip_p=flip_p, jitter_p=jitter_p)
    if padding is None:
        padding = max(1, round(image_size / 10))
    if padding < 0:
        raise metareg.OptionError(f"lee2019: padding must be >= 0, got {padding}")
    scale = tuple(scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise metareg.OptionError(f"lee2019: scale must be two numbers 0 < low <= high <= 1, got {list(scale)}")
    if jitter < 0:
        raise metareg.OptionError(f"lee2019: jitter must be >= 0, got {jitter}")
    augment: list[nn.Module] = []
    if crop == "padded":
        if padding:
            augment.append(K.RandomCrop((image_size, image_size), padding=padding, p=1.0))
    elif crop == "resized":
        augment.append(K.RandomResizedCrop((image_size, image_size), scale=scale, p=1.0))
    elif crop != "none":
        raise metareg.OptionError(f"lee2019: crop must be padded, resized or none, got {crop!r}")
    if flip_p:
        augment.append(K.RandomHorizontalFlip(p=flip_p))
    augment += _colour_jitters(channels, jitter_p, brightness=jitter, contrast=jitter, saturation=jitter, hue=0.0,
                               separate=False)
    norm = _normalize("lee2019", channels, mean, std) if normalize else None
    return KorniaTransform(nn.Sequential(*augment), normalize=norm)


def omniglot(
    *,
    channels: int = 1,
    image_size: int = 28,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: float = 0.1,
    p: float = 0.5,
    padding_mode: Literal["zeros", "border", "reflection"] = "border",
) -> metareg.Transform:
    """Small affine jitter for handwritten characters: rotation, translation and scaling.

    (Rotating by multiples of 90 degrees to make new classes is a dataset option, not an augmentation.)

    degrees: maximum rotation either way, in degrees.
    translate: maximum shift as a fraction of the image size, either way.
    scale: maximum zoom either way: the scale factor is drawn from [1 - scale, 1 + scale].
    p: probability that an image is jittered at all.
    padding_mode: how pixels moved in from outside are filled: border repeats the edge (the paper background).
    """
    import kornia.augmentation as K

    _check_p("omniglot", p=p)
    if degrees < 0 or not 0 <= translate < 1 or not 0 <= scale < 1:
        raise metareg.OptionError(
            f"omniglot: need degrees >= 0, 0 <= translate < 1 and 0 <= scale < 1, "
            f"got degrees={degrees}, translate={translate}, scale={scale}"
        )
    if padding_mode not in ("zeros", "border", "reflection"):
        raise metareg.OptionError(f"omniglot: padding_mode must be zeros, border or reflection, got {padding_mode!r}")
    augment = K.RandomAffine(
        degrees=degrees,
        translate=(translate, translate) if translate else None,
        scale=(1 - scale, 1 + scale) if scale else None,
        padding_mode=padding_mode,
        p=p,
    )
    return KorniaTransform(nn.Sequential(augment))
