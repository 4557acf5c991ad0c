"""The ``.fewshot`` file: one deployable few-shot classifier (``metareg export --support``).

A safetensors file, so it holds tensors and one JSON header and nothing that runs code:

* tensors: the network's weights (``strategy.*``, ``transform.*``) and the strategy's prepared
  support state (``support.state.<key>``: prototypes for prototypical networks, the fitted
  head for MetaOptNet); for strategies whose state cannot be extended class by class, also the
  support images as the model saw them (``support.images`` uint8 ``(S, C, H, W)``,
  ``support.labels``), so that ``metareg enroll`` can refit;
* ``__metadata__["metareg-fewshot"]``: JSON with the class names, the whole preprocessing a
  deployment must repeat, the open-set calibration, the provenance, and the checkpoint's own
  metareg section (config with backbone and strategy names and options), from which the
  backbone is rebuilt through the plugin registry. The training stack (Lightning) is never
  imported to read or use it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metareg.errors import CheckpointError

FORMAT = "metareg-fewshot"
FORMAT_VERSION = 1
SUFFIX = ".fewshot"
STATE = "support.state."
_MAKE = "make one with `metareg export -c CHECKPOINT --support DIR -o model.fewshot`"


def preprocessing(clf) -> dict[str, Any]:
    """Every step between an image file and the network, in order, as a deployment must repeat it."""
    config = clf.model.config
    return {
        "exif_orientation": "applied (images are turned upright first)",
        "color": "L" if clf.channels == 1 else "RGB",
        "channels": clf.channels,
        "transparency": "flattened onto white",
        "crop": clf.crop,  # "center": non-square images are cut to their centre square before resizing
        "image_size": clf.image_size,
        "resample": clf.resample,
        "scale": "pixels / 255",
        "invert": clf.invert,
        "normalisation": {"transform": config.transform, "options": dict(config.transform_options),
                          "step": "transform.evaluate, weights stored as transform.*"},
    }


def provenance(clf, checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """Where the model came from: versions, training data and components, and the run's test accuracy."""
    import metareg

    config, meta = clf.model.config, clf.model.meta
    out: dict[str, Any] = {
        "metareg_version": metareg.__version__,
        "trained_with_metareg": meta.get("metareg_version"),
        "dataset": config.dataset, "dataset_options": dict(config.dataset_options),
        "backbone": config.backbone, "backbone_options": dict(config.backbone_options),
        "strategy": config.strategy, "strategy_options": dict(config.strategy_options),
        "checkpoint": Path(checkpoint).name if checkpoint else None,
        "test_accuracy": None,
    }
    summary = _run_summary(checkpoint)
    if summary:
        out["test_accuracy"] = {k: summary.get(k) for k in ("accuracy", "ci95", "episodes", "ways", "shots", "line")}
    return out


def _run_summary(checkpoint) -> dict | None:
    """A `metareg run` directory's summary.json, found from RUN_DIR/checkpoints/<file>."""
    if not checkpoint:
        return None
    path = Path(checkpoint).resolve()
    for candidate in (path.parent.parent / "summary.json", path.parent / "summary.json"):
        try:
            doc = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "accuracy" in doc:
            return doc
    return None


def encode(clf, *, checkpoint=None, prov: dict | None = None) -> bytes:
    """The file's bytes for a fitted :class:`metareg.FewShotClassifier`."""
    from safetensors.torch import save

    if clf.state is None or clf.classes is None:
        raise CheckpointError("the classifier has no support set to store; call fit(support) before save()")
    tensors = {}
    for prefix, module in (("strategy.", clf.strategy), ("transform.", clf.transform)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous().clone()
    for k, v in clf.state.items():
        tensors[STATE + k] = v.detach().cpu().contiguous().clone()
    if clf.support_images is not None:
        tensors["support.images"] = clf.support_images.cpu().contiguous()
        tensors["support.labels"] = clf.support_labels.cpu().contiguous()
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "classes": list(clf.classes),
        "counts": list(clf.counts) if clf.counts else None,
        "strategy": {"name": clf.strategy_name, "incremental": clf.incremental, "state": sorted(clf.state)},
        "preprocessing": preprocessing(clf),
        "open_set": clf.open_set,
        "provenance": prov if prov is not None else (clf.provenance or provenance(clf, checkpoint)),
        "checkpoint": clf.model.meta,
    }
    return save(tensors, metadata={FORMAT: json.dumps(meta, default=str)})


def write(clf, path: str | os.PathLike, *, inputs=(), checkpoint=None) -> Path:
    """Write atomically (a reader sees the old file or the new one), with the umask's permissions."""
    from metareg.files import atomic_write

    return atomic_write(path, encode(clf, checkpoint=checkpoint), inputs=inputs)


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, tensors)`` of a ``.fewshot`` file; anything else is refused by name."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model file {str(path)!r} does not exist; {_MAKE}")
    if not path.is_file():
        raise CheckpointError(f"model {str(path)!r} is a folder, not a .fewshot file; {_MAKE}")
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(FORMAT)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if raw else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable .fewshot file (corrupt, truncated or another "
                              f"format: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {_MAKE}"
                              ) from None
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a .fewshot file (no {FORMAT} metadata); {_MAKE}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} is .fewshot format {meta.get('format_version')}; this metareg reads "
                              f"format {FORMAT_VERSION}: export it again with this version")
    for key, kind in (("classes", list), ("checkpoint", dict), ("preprocessing", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{str(path)!r} is incomplete: its metadata lacks {key!r}; the file was damaged "
                                  "or edited by hand; export it again")
    state = {k[len(STATE):] for k in tensors if k.startswith(STATE)}
    if not state:
        raise CheckpointError(f"{str(path)!r} is incomplete: it holds no support state; export it again")
    return meta, tensors


def load(path: str | os.PathLike, *, device="cpu", batch_size: int = 64, registry=None):
    """The :class:`metareg.FewShotClassifier` a ``.fewshot`` file holds, ready to predict."""
    import torch

    from metareg.model_loading import model_from_payload
    from metareg.predict import FewShotClassifier

    meta, tensors = read(path)
    prep = meta["preprocessing"]
    inner = dict(meta["checkpoint"])
    data = dict(inner.get("data") or {})
    data["info"] = {**(data.get("info") or {}), "invert": bool(prep.get("invert", False)),
                    "resample": prep.get("resample", "bilinear"), "crop": prep.get("crop", "center")}
    inner["data"] = data
    weights = {k: v for k, v in tensors.items() if not k.startswith("support.")}
    model = model_from_payload(inner, weights, str(path), registry)
    clf = FewShotClassifier(model, device=device, batch_size=batch_size, source=os.fspath(path))
    clf.classes = [str(c) for c in meta["classes"]]
    clf.state = {k[len(STATE):]: v.to(clf.device) for k, v in tensors.items() if k.startswith(STATE)}
    for v in clf.state.values():
        if v.shape[0] != len(clf.classes) and clf.incremental:
            raise CheckpointError(f"{str(path)!r} is inconsistent: {len(clf.classes)} class names but support "
                                  f"state of {v.shape[0]} rows; export it again")
    if "support.images" in tensors:
        clf.support_images = tensors["support.images"].to(torch.uint8)
        clf.support_labels = tensors["support.labels"].to(torch.long)
    counts = meta.get("counts")
    clf.counts = [int(c) for c in counts] if isinstance(counts, list) and len(counts) == len(clf.classes) else None
    clf.open_set = meta.get("open_set")
    clf.provenance = meta.get("provenance")
    return clf
