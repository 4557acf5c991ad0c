"""The metareg checkpoint format: what training writes into it, reading it back safely, its checks.

A metareg checkpoint is a Lightning checkpoint with an extra ``"metareg"`` entry:
format version, metareg version, the resolved run config, the image shape and the
TaskInfo. Everything in it is tensors and plain containers, so it always loads
with ``torch.load(weights_only=True)``; anything that needs more is refused.

Rebuilding the model a checkpoint holds is ``model_loading.py``'s job: this module reaches
no registry and builds nothing, so training, which writes checkpoints, stays clear of both.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metareg.errors import CheckpointError

FORMAT = "metareg-checkpoint"
FORMAT_VERSION = 1


def payload(config, task, dataset_name: str, *, pretrained_on: str | None = None) -> dict[str, Any]:
    """The ``"metareg"`` section the learner adds to each checkpoint Lightning saves.

    ``backbone.pretrained_on``: what the backbone's starting weights were trained on. Recorded so
    that the model is rebuilt from the stored weights alone, without its pretrained-weights file.
    """
    import metareg

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metareg_version": metareg.__version__,
        "config": config.to_dict(),
        "task": asdict(task),
        "data": {"name": dataset_name, "channels": task.channels, "image_size": task.image_size},
        "backbone": {"pretrained_on": pretrained_on},
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
    """Refuse a metareg section that lacks what rebuilding the model reads
    (:func:`metareg.model_loading.model_from_payload`), naming the file and the part."""
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
