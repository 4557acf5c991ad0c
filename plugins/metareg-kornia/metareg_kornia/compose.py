"""A chain built from configuration: a list of ``kornia.augmentation`` class names with arguments.

Each item is a class name (``"RandomVerticalFlip"``) or a one-key mapping from a
class name to its keyword arguments (``{"RandomAffine": {"degrees": 10, "p": 0.5}}``).
From a YAML config the list arrives as a list; from the command line as JSON or
YAML text::

    --transform compose --transform-opt 'augmentations=[{"RandomHorizontalFlip": {"p": 0.5}}, "RandomVerticalFlip"]'
    --transform-opt 'augmentations=[RandomVerticalFlip, {RandomAffine: {degrees: 10}}]'

Lists in arguments become tuples (Kornia's ranges). The chain is tried once on a
dummy batch when it is built, so an argument Kornia only checks when it runs (a
colour op on 1-channel images, a size larger than the image) fails before training
starts. If the chain changes the image size (a crop to a fixed size), evaluation
resizes to that size so training and evaluation batches have the same shape.
"""
from __future__ import annotations

import difflib
import inspect
import json
from typing import Any

import torch
from torch import nn

import metareg
from metareg_kornia.chains import KorniaTransform, _normalize

_NAME = "compose"


def available() -> dict[str, type]:
    """The 2D Kornia augmentations a chain may use, by class name."""
    import kornia.augmentation as K

    out = {}
    for name in dir(K):
        obj = getattr(K, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, K.AugmentationBase2D)
            and not inspect.isabstract(obj)
            and not name.endswith("Base2D")
            and not name.startswith("_")
        ):
            out[name] = obj
    return out


def parse(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """``spec`` (a list, or JSON / YAML text of one) -> ``[(class name, kwargs), ...]``."""
    if isinstance(spec, str):
        text = spec.strip()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            try:
                spec = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise metareg.OptionError(
                    f"{_NAME}: augmentations is neither JSON nor YAML ({e.__class__.__name__}: "
                    f"{str(e).splitlines()[0]}); expected e.g. "
                    '[{"RandomHorizontalFlip": {"p": 0.5}}, "RandomVerticalFlip"]'
                ) from None
            if isinstance(spec, str) and "," not in spec:
                spec = [spec]  # a single bare name
    if spec is None:
        return []
    if isinstance(spec, (dict, str)):
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        raise metareg.OptionError(
            f"{_NAME}: augmentations must be a list of names or {{name: {{arguments}}}} mappings, got {spec!r}"
        )
    items = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            items.append((item.strip(), {}))
        elif isinstance(item, dict) and len(item) == 1:
            (name, kwargs), = item.items()
            if kwargs is None:
                kwargs = {}
            if not isinstance(kwargs, dict):
                raise metareg.OptionError(
                    f"{_NAME}: augmentation #{i + 1} {name!r}: arguments must be a mapping like {{\"p\": 0.5}}, "
                    f"got {kwargs!r}"
                )
            items.append((str(name).strip(), dict(kwargs)))
        else:
            raise metareg.OptionError(
                f"{_NAME}: augmentation #{i + 1} must be a class name or a one-key mapping "
                f"{{name: {{arguments}}}}, got {item!r}"
            )
    return items


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def build(items: list[tuple[str, dict[str, Any]]]) -> list[nn.Module]:
    classes = available()
    lowered = {n.lower(): n for n in classes}
    modules = []
    for i, (name, kwargs) in enumerate(items):
        cls = classes.get(name) or classes.get(lowered.get(name.lower(), ""))
        if cls is None:
            close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise metareg.OptionError(
                f"{_NAME}: augmentation #{i + 1} {name!r} is not a kornia.augmentation 2D augmentation.{hint} "
                f"Available: {', '.join(sorted(classes))}."
            )
        params = inspect.signature(cls.__init__).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        valid = [p for p in params if p != "self" and params[p].kind not in (params[p].VAR_POSITIONAL,
                                                                             params[p].VAR_KEYWORD)]
        unknown = [k for k in kwargs if k not in params]
        if unknown and not accepts_any:
            k = unknown[0]
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise metareg.OptionError(
                f"{_NAME}: {cls.__name__} has no argument {k!r}.{hint} Its arguments: {', '.join(valid)}."
            )
        try:
            modules.append(cls(**_tuples(kwargs)))
        except (TypeError, ValueError, AssertionError, RuntimeError) as e:
            raise metareg.OptionError(
                f"{_NAME}: {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) was refused: "
                f"{str(e).strip() or type(e).__name__}. Its arguments: {', '.join(valid)}."
            ) from None
    return modules


def compose(
    *,
    channels: int = 3,
    image_size: int = 84,
    augmentations: Any = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> metareg.Transform:
    """A chain of kornia.augmentation classes listed in the configuration; no code needed.

    augmentations: a list whose items are class names ("RandomVerticalFlip") or {name: {arguments}} mappings
        ({"RandomAffine": {"degrees": 10, "p": 0.5}}); a YAML list in a config file, JSON or YAML text on the
        command line. Applied in order, to training batches only.
    mean: per-channel means (or one value) to normalise with, in training and evaluation; default: no normalisation.
    std: per-channel standard deviations (or one value); required with mean.
    """
    if (mean is None) != (std is None):
        raise metareg.OptionError(f"{_NAME}: give both mean and std to normalise, or neither")
    norm = _normalize(_NAME, channels, mean, std) if mean is not None else None
    chain = nn.Sequential(*build(parse(augmentations)))
    # Try the chain once, on the generator's side branch so seeded runs are not shifted.
    probe = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        try:
            out = chain(probe)
        except Exception as e:  # noqa: BLE001 - Kornia raises many types; all mean a bad chain for this data
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise metareg.OptionError(
                f"{_NAME}: the chain fails on {channels}-channel {image_size}x{image_size} images: "
                f"{type(e).__name__}: {first}"
            ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[:2] != probe.shape[:2]:
        raise metareg.OptionError(
            f"{_NAME}: the chain must map (N, C, H, W) images to (N, C, H', W') images; "
            f"it returned {getattr(out, 'shape', type(out).__name__)}"
        )
    eval_prepare = None
    if out.shape[-2:] != probe.shape[-2:]:
        import kornia.augmentation as K

        eval_prepare = K.Resize(tuple(out.shape[-2:]))
    return KorniaTransform(chain, normalize=norm, eval_prepare=eval_prepare)
