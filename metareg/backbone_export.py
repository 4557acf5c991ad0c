"""A ``.fewshot`` file from a pretrained backbone alone, no meta-training (``metareg export --backbone``).

The backbone is built through the registry exactly as a run builds it, so ``pretrained=PATH`` is
loaded (weights only) by the backbone's own option group (:class:`metareg.Pretraining`). It is
wrapped in the ``prototypicalnetworks`` strategy: each support class becomes the mean embedding
of its images, every class the user gives is kept (there is no training/validation/test split). The file's config
names the data as ``imagefolder`` of the support folder with ``ratios=1,0,0``.

The file stores the backbone's weights, so its saved config drops the four pretraining options:
the file is self-contained (the weights file may be gone when it is loaded) and a frozen
schedule without weights does not warn. The provenance keeps the options as the user gave them.

Open set: there are no validation classes to calibrate a threshold on, and the user's own
classes are the deployment's known classes, so unknowns cannot be drawn from outside them
without shrinking the few support images further. The file stores no threshold (every query
gets its nearest class); a model meta-trained with ``metareg run`` gets a calibrated one.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from metareg.errors import OptionError

STRATEGY = "prototypicalnetworks"
# Where the backbone's own defaults say nothing (a factory without these arguments).
FALLBACK_SIZE, FALLBACK_CHANNELS = 84, 3


def _shape(factory, image_size: int | None, channels: int | None) -> tuple[int, int]:
    """The input shape: as given, else the backbone factory's own defaults."""
    params = inspect.signature(factory).parameters

    def default(name: str, fallback: int) -> int:
        p = params.get(name)
        value = p.default if p is not None else inspect.Parameter.empty
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else fallback

    size = image_size if image_size is not None else default("image_size", FALLBACK_SIZE)
    chans = channels if channels is not None else default("channels", FALLBACK_CHANNELS)
    if not 4 <= size <= 1024:
        raise OptionError(f"--image-size must be between 4 and 1024, got {size}")
    if chans not in (1, 3):
        raise OptionError(f"--channels must be 1 (grey) or 3 (RGB), got {chans}")
    return size, chans


def from_backbone(backbone: str, options: dict[str, Any], support: Path | None, *, image_size: int | None = None,
                  channels: int | None = None, invert: bool = False, transform: str = "none",
                  transform_options: dict[str, Any] | None = None, registry=None):
    """A :class:`metareg.FewShotClassifier` of ``backbone`` with prototypes of every class in ``support``.

    ``transform``: its evaluation step (e.g. ``lee2019``'s normalisation) runs before the backbone, as
    in a run; an ImageNet-pretrained backbone wants the normalisation its weights were trained with.

    Every input (names, options, support folder and images) is checked before the weights are loaded.
    """
    import metareg
    from metareg.build import build_model, resolve_all
    from metareg.checkpoint import payload
    from metareg.config import RunConfig
    from metareg.model_loading import LoadedModel
    from metareg.predict import FewShotClassifier, read_support_folder
    from metareg.pretraining import without_pretraining
    from metareg.protocols import pretrained_on
    from metareg.registry import Registry

    if support is None:
        raise OptionError("--backbone builds its classes from the support set: pass --support DIR "
                          "(SUPPORT/<class>/<image>)")
    classes = read_support_folder(support)
    registry = registry or Registry.current()
    checked = RunConfig.from_sources({"backbone": backbone, "backbone_options": dict(options), "strategy": STRATEGY,
                                      "transform": transform, "transform_options": dict(transform_options or {})})
    components = resolve_all(checked, registry, dataset=False)  # names and option types refused here
    size, chans = _shape(components.backbone.factory, image_size, channels)
    name = components.backbone.name
    info = {"invert": bool(invert), "resample": "bilinear", "crop": "center"}
    # Built with the options as given (pretrained weights loaded); saved without the pretraining group.
    strategy, transform, task = build_model(components, checked, chans, size, len(classes), "imagefolder", info)
    # The data the prototypes came from, said as the dataset that reads it: every class to "training".
    data = {"root": str(Path(support).resolve()), "image_size": size, "channels": chans, "ratios": [1, 0, 0]}
    config = checked.replace(backbone=name, backbone_options=without_pretraining(checked.backbone_options),
                             transform=components.transform.name, dataset="imagefolder", dataset_options=data)
    meta = payload(config, task, "imagefolder", pretrained_on=pretrained_on(strategy.backbone))
    meta["data"]["info"] = info
    clf = FewShotClassifier(LoadedModel(strategy, transform, config, task, meta), invert=invert,
                            source=str(support))
    clf.fit(support)
    origin = pretrained_on(strategy.backbone)
    clf.provenance = {
        "metareg_version": metareg.__version__,
        "meta_training": None,
        "note": f"no meta-training: backbone {name} with its options",
        "backbone": name, "backbone_options": dict(checked.backbone_options), "pretrained_on": origin,
        "strategy": STRATEGY, "strategy_options": {},
        "dataset": "imagefolder", "dataset_options": dict(data), "checkpoint": None, "test_accuracy": None,
    }
    return clf
