"""A trained model rebuilt from what a checkpoint (or a safetensors export) holds.

Beside ``build.py`` because it is the same step run backwards from a file: the saved config
resolves the components through the registry and ``build_model`` builds them, then the weights
go in. ``checkpoint.py`` knows only the file format, so training, which writes checkpoints,
never reaches the registry through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metareg.checkpoint import check_finite, check_sections, read_checkpoint
from metareg.errors import CheckpointError


@dataclass
class LoadedModel:
    """A trained model rebuilt from a checkpoint, in eval mode on the CPU."""

    strategy: Any  # metareg.Strategy, with its backbone
    transform: Any  # metareg.Transform
    config: Any  # RunConfig
    task: Any  # TaskInfo
    meta: dict[str, Any]

    @property
    def channels(self) -> int:
        return self.task.channels

    @property
    def image_size(self) -> int:
        return self.task.image_size


def load_model(path: str | Path, registry=None) -> LoadedModel:
    """Rebuild strategy, backbone and transform from a checkpoint and load their weights."""
    ckpt = read_checkpoint(path)
    return model_from_payload(ckpt["metareg"], ckpt["state_dict"], str(path), registry)


def model_from_payload(meta: dict[str, Any], state: dict[str, Any], source: str, registry=None) -> LoadedModel:
    """Rebuild the model that ``meta`` (a checkpoint's metareg section) describes and load ``state`` into it.

    Shared by checkpoints and safetensors exports; ``source`` names the file in errors.
    """
    from metareg.build import build_model, resolve_all
    from metareg.config import RunConfig
    from metareg.errors import MetaregError

    # Again here: safetensors exports reach this without read_checkpoint.
    check_sections(meta, source)
    check_finite(state, source)
    config = RunConfig.from_saved(meta["config"], source)
    try:
        components = resolve_all(config, registry, dataset=False)
        stored = _stored_weights_only(meta, components, config)
        if stored is not None:
            components = resolve_all(stored, registry, dataset=False)
    except MetaregError as exc:
        raise CheckpointError(f"cannot rebuild the model of {source!r}: {exc}") from None
    task = meta["task"]
    strategy, transform, task_info = build_model(
        components, stored or config, task["channels"], task["image_size"], task["num_train_classes"],
        meta["data"]["name"], meta["data"].get("info"),
    )
    if stored is not None and meta["backbone"].get("pretrained_on"):
        strategy.backbone.pretrained_on = meta["backbone"]["pretrained_on"]
        _warn_leak(strategy.backbone, components.backbone.name, meta)
    for prefix, module in (("strategy.", strategy), ("transform.", transform)):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as exc:  # shapes that differ from the rebuilt model's
            raise CheckpointError(
                f"weights in {source!r} do not fit the {prefix[:-1]} rebuilt from its config "
                f"({str(exc).strip().splitlines()[-1].strip()}); was a plugin upgraded since training?"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"weights in {source!r} do not fit the {prefix[:-1]} rebuilt from its config "
                f"(missing: {missing[:3]}, unexpected: {unexpected[:3]}); was a plugin upgraded since training?"
            )
    strategy.eval()
    transform.eval()
    return LoadedModel(strategy, transform, config, task_info, meta)


def _stored_weights_only(meta: dict[str, Any], components, config):
    """``config`` without the backbone's pretraining group, when the file records what that group gave.

    Every weight is in the file, so a model trained from ``pretrained=PATH`` must not need PATH again;
    checkpoints from before ``backbone.pretrained_on`` was recorded are rebuilt as they were.
    """
    from metareg.pretraining import without_pretraining

    if "backbone" not in meta or not getattr(components.backbone.factory, "__metareg_pretraining__", False):
        return None
    return config.replace(backbone_options=without_pretraining(config.backbone_options))


def _warn_leak(backbone, name: str, meta: dict[str, Any]) -> None:
    import warnings

    from metareg.protocols import pretraining_leak

    leak = pretraining_leak(backbone, name, meta["data"].get("info"), meta["data"]["name"])
    if leak:
        warnings.warn(leak, stacklevel=3)
