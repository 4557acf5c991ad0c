"""Reading metareg checkpoints safely, and rebuilding the model they hold.

A metareg checkpoint is a Lightning checkpoint with an extra ``"metareg"`` entry:
format version, metareg version, the resolved run config, the image shape and the
TaskInfo. Everything in it is tensors and plain containers, so it always loads
with ``torch.load(weights_only=True)``; anything that needs more is refused.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metareg.errors import CheckpointError

FORMAT = "metareg-checkpoint"
FORMAT_VERSION = 1


def payload(config, task, dataset_name: str, class_names: list[str] | None = None) -> dict[str, Any]:
    import metareg

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metareg_version": metareg.__version__,
        "config": config.to_dict(),
        "task": asdict(task),
        "data": {"name": dataset_name, "channels": task.channels, "image_size": task.image_size},
    }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that metareg wrote it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is not ours
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or truncated?): not a torch.save archive"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{str(path)!r} holds Python objects that a weights-only load refuses ({str(exc).splitlines()[0]}); "
            "metareg only opens checkpoints made of tensors and plain values, such as those `metareg run` writes"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (corrupt or truncated?): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    meta = ckpt.get("metareg") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} was not written by metareg (no metareg section): pass a checkpoint from a "
            "`metareg run` directory, e.g. RUN_DIR/checkpoints/last.ckpt"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} uses metareg checkpoint format {meta.get('format_version')} "
            f"(written by metareg {meta.get('metareg_version')}); this metareg reads format {FORMAT_VERSION}"
        )
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{str(path)!r} has no model weights (state_dict)")
    check_sections(meta, str(path))
    return ckpt


# What rebuilding a model reads from a checkpoint's metareg section: section -> keys it must hold.
SECTIONS = {
    "config": (),
    "task": ("channels", "image_size", "num_train_classes"),
    "data": ("name",),
}


def check_sections(meta: dict[str, Any], source: str) -> None:
    """Refuse a metareg section that lacks what :func:`model_from_payload` reads, naming the file and the part."""
    for section, keys in SECTIONS.items():
        value = meta.get(section)
        if not isinstance(value, dict):
            state = "missing" if value is None else f"a {type(value).__name__}, not a mapping"
            raise CheckpointError(
                f"{source!r} is incomplete: its metareg section {section!r} is {state}; the file was damaged or "
                "edited by hand: use a checkpoint as `metareg run` wrote it (RUN_DIR/checkpoints/last.ckpt)"
            )
        missing = [k for k in keys if k not in value]
        if missing:
            raise CheckpointError(
                f"{source!r} is incomplete: its metareg section {section!r} lacks {', '.join(map(repr, missing))}; "
                "use a checkpoint as `metareg run` wrote it (RUN_DIR/checkpoints/last.ckpt)"
            )


def check_finite(state: dict[str, Any], source: str) -> None:
    """Refuse weights holding NaN or infinity: such a model answers at chance level without a word."""
    import torch

    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source!r} holds non-finite weights: {name!r} has {bad} NaN or infinite value"
                f"{'' if bad == 1 else 's'} of {value.numel()}; the training that wrote it diverged: use an "
                "earlier checkpoint or train again with a smaller learning rate"
            )


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
    except MetaregError as exc:
        raise CheckpointError(f"cannot rebuild the model of {source!r}: {exc}") from None
    task = meta["task"]
    strategy, transform, task_info = build_model(
        components, config, task["channels"], task["image_size"], task["num_train_classes"], meta["data"]["name"],
        meta["data"].get("info"),
    )
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
