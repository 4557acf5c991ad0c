"""`metareg export`: a trained model as a file that loads without metareg's training stack.

Formats:

- ``safetensors``: every weight of the strategy (with its backbone) and transform, plus a
  JSON header (``__metadata__["metareg"]``) holding the checkpoint's metareg section: run
  config (component names and options), TaskInfo, image shape. ``safetensors.torch.load_file``
  reads the weights anywhere; :meth:`metareg.FewShotClassifier.from_checkpoint` rebuilds the
  model from it through the plugin registry. No optimiser state, no pickle.
- ``torchscript``: a ``torch.jit`` module needing only torch. ``forward(support, support_labels,
  query) -> probabilities (Q, ways)`` for strategies that predict from features alone
  (:meth:`metareg.Strategy.export_head`, e.g. prototypical networks); ``embed(images) ->
  features`` always. Metadata in the archive's ``extra/metareg.json``.
- ``onnx``: for class-mean heads (prototypical networks) the whole prediction,
  ``(support, support_onehot (S, ways), query) -> (probabilities, query_features)`` with
  dynamic support, query and ways axes; otherwise the embedding network ``images (N, C, S, S)
  -> features (N, D)``. The model's metadata (``metareg`` key) says which (``graph``) and
  describes the head, e.g. ``{"type": "PrototypeHead", "cosine": false, "temperature": 1.0}``.

Image inputs of the torchscript and onnx files are pixels as read from files: converted
to the model's channels, resized to ``image_size`` (with the PIL filter named in
``inputs.resize``) and scaled to ``[0, 1]``; inversion (``inputs.invert``) and the
transform's evaluation step happen inside.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metareg.errors import CheckpointError, MetaregError, OptionError
from metareg.files import atomic_write, check_output

# "fewshot": one deployable file with the support set (metareg.fewshot_file), written by the CLI with --support.
FORMATS = ("safetensors", "torchscript", "onnx", "fewshot")
SUFFIXES = {".safetensors": "safetensors", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript",
            ".onnx": "onnx", ".fewshot": "fewshot"}
EXPORT_FORMAT = "metareg-export"
EXPORT_VERSION = 1


def format_for(output: str | os.PathLike, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise OptionError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    guess = SUFFIXES.get(Path(output).suffix.lower())
    if guess is None:
        raise OptionError(f"cannot tell the export format from {str(output)!r}; pass --format "
                          f"{'|'.join(FORMATS)} or use a suffix {', '.join(SUFFIXES)}")
    return guess


def is_safetensors(path: str | os.PathLike) -> bool:
    """A safetensors file starts with an 8-byte header length and a JSON object."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < (100 << 20)


# ---------------------------------------------------------------------------- what the files hold


class Embedder(nn.Module):
    """File pixels in [0, 1] -> features: optional inversion, the transform's evaluation step, the backbone."""

    def __init__(self, backbone: nn.Module, transform: nn.Module, invert: bool):
        super().__init__()
        self.backbone, self.transform, self.invert = backbone, transform, bool(invert)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.invert:
            images = 1.0 - images
        return self.backbone(self.transform.evaluate(images)).float()


class FewShotModule(nn.Module):
    """``(support, support_labels, query) -> probabilities``: scripted head over a traced embedder."""

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.logits(support, support_labels, query).softmax(-1)

    @torch.jit.export
    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        features = self.embedder(torch.cat([support, query], 0))
        n = support.shape[0]
        return self.head(features[:n], support_labels, features[n:])

    @torch.jit.export
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)


class EmbeddingModule(nn.Module):
    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)

    @torch.jit.export
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images)


def describe(model, invert: bool) -> dict[str, Any]:
    """The metadata every export carries: what the model is and how to feed it."""
    head = model.strategy.export_head()
    from metareg.dataset_info import saved_info

    resample = saved_info(model.meta).resample
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "metareg": model.meta,
        "inputs": {"channels": model.task.channels, "image_size": model.task.image_size,
                   "color": "L" if model.task.channels == 1 else "RGB", "resize": resample,
                   "scale": "pixels / 255", "invert": invert},
        "feature_dim": model.task.feature_dim,
        "head": _head_info(head),
    }


def _head_info(head) -> dict[str, Any] | None:
    if head is None:
        return None
    info: dict[str, Any] = {"type": type(head).__name__}
    for name in ("cosine", "temperature", "distance"):
        if hasattr(head, name):
            info[name] = getattr(head, name)
    return info


# ---------------------------------------------------------------------------- writing


def export(model, output: str | os.PathLike, fmt: str, *, invert: bool, inputs: tuple = ()) -> Path:
    """Write ``model`` (a :class:`metareg.model_loading.LoadedModel`) to ``output`` in format ``fmt``.

    Every format is serialised in memory and written with :func:`metareg.files.atomic_write`:
    torch reports a failing file write as a C++ error (or aborts the process), which would
    hide the OS reason and leave a partial file. ``inputs`` are files the output must not be.
    """
    output = Path(output)
    check_output(output, *inputs)
    model.strategy.cpu().eval()
    model.transform.cpu().eval()
    writers = {"safetensors": _export_safetensors, "torchscript": _export_torchscript, "onnx": _export_onnx}
    if fmt not in writers:
        raise OptionError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    return atomic_write(output, writers[fmt](model, invert), inputs=inputs)


def _example(model, n: int = 2) -> torch.Tensor:
    return torch.rand(n, model.task.channels, model.task.image_size, model.task.image_size)


def _export_safetensors(model, invert: bool) -> bytes:
    from safetensors.torch import save

    tensors = {}
    for prefix, module in (("strategy.", model.strategy), ("transform.", model.transform)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().cpu().contiguous().clone()
    meta = describe(model, invert)
    return save(tensors, metadata={"metareg": json.dumps(meta, default=str)})


def _traced_embedder(model, invert: bool):
    embedder = Embedder(model.strategy.backbone, model.transform, invert).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.trace(embedder, _example(model), check_trace=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means this backbone cannot be exported
            raise MetaregError(
                f"backbone {model.config.backbone!r} cannot be traced by torch.jit ({type(exc).__name__}: {exc}); "
                "export --format safetensors instead"
            ) from exc


def _export_torchscript(model, invert: bool) -> bytes:
    head = model.strategy.export_head()
    if head is None:
        raise MetaregError(
            f"strategy {model.config.strategy!r} predicts by adapting weights on the support set, which a "
            "TorchScript file cannot hold; export --format safetensors (weights and config) and predict with "
            "metareg, or use a strategy with a feature-only head such as prototypicalnetworks"
        )
    embedder = _traced_embedder(model, invert)
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream in favour of torch.export, but it is still the one format
        # that loads with plain torch and takes a support set of any size.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.script(FewShotModule(embedder, torch.jit.script(head.eval())))
        except Exception as exc:  # noqa: BLE001
            raise MetaregError(f"the prediction head of strategy {model.config.strategy!r} cannot be scripted "
                               f"({type(exc).__name__}: {exc}); export --format safetensors instead") from exc
        meta = json.dumps(describe(model, invert), default=str)
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files={"metareg.json": meta})
    return buffer.getvalue()


class PrototypePipeline(nn.Module):
    """ONNX-friendly ``(support, support_onehot, query) -> (probabilities, query_features)``: the number of
    classes comes from the one-hot matrix's width, so it stays a dynamic axis of the graph."""

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder, self.head = embedder, head

    def forward(self, support: torch.Tensor, support_onehot: torch.Tensor, query: torch.Tensor):
        features = self.embedder(torch.cat([support, query], 0))
        n = support.shape[0]
        prototypes = (support_onehot.t() @ features[:n]) / support_onehot.sum(0).clamp(min=1).unsqueeze(1)
        return self.head.logits(features[n:], prototypes).softmax(-1), features[n:]


def _export_onnx(model, invert: bool) -> bytes:
    try:
        import onnx
    except ImportError:
        raise MetaregError(
            "ONNX export needs the 'onnx' package, which is not installed: pip install 'metareg[export]' "
            "(or pip install onnx)"
        ) from None
    embedder = Embedder(model.strategy.backbone, model.transform, invert).eval()
    head = model.strategy.export_head()
    meta = describe(model, invert)
    if head is not None and callable(getattr(head, "logits", None)):
        # A class-mean head (prototypes): the whole prediction in one graph.
        module = PrototypePipeline(embedder, head.eval()).eval()
        example = (_example(model, 3), torch.eye(2)[torch.tensor([0, 0, 1])], _example(model, 2))
        names = {"input_names": ["support", "support_onehot", "query"],
                 "output_names": ["probabilities", "query_features"]}
        axes = {"support": {0: "support"}, "support_onehot": {0: "support", 1: "ways"}, "query": {0: "queries"},
                "probabilities": {0: "queries", 1: "ways"}, "query_features": {0: "queries"}}
        meta["graph"] = ("support (S, C, H, W), support_onehot (S, ways) float, query (Q, C, H, W) -> "
                         "probabilities (Q, ways), query_features (Q, D)")
    else:
        module, example = embedder, (_example(model),)
        names = {"input_names": ["images"], "output_names": ["features"]}
        axes = {"images": {0: "batch"}, "features": {0: "batch"}}
        meta["graph"] = "images (N, C, H, W) -> features (N, D)"
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript-based exporter: fast, dynamic axes, and no onnxscript needed.
            torch.onnx.export(module, example, buffer, dynamo=False, dynamic_axes=axes, **names)
        except Exception as exc:  # noqa: BLE001
            raise MetaregError(f"the model of {model.config.strategy!r} with backbone {model.config.backbone!r} "
                               f"cannot be exported to ONNX ({type(exc).__name__}: {exc}); "
                               "export --format safetensors instead") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "metareg", json.dumps(meta, default=str)
    return proto.SerializeToString()


# ---------------------------------------------------------------------------- reading safetensors exports


def read_safetensors_export(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, weights)`` of a ``metareg export --format safetensors`` file (no pickle involved)."""
    from safetensors import SafetensorError, safe_open

    from metareg.checkpoint import FORMAT, FORMAT_VERSION

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            header = fh.metadata() or {}
            raw = header.get("metareg")
            state = {k: fh.get_tensor(k) for k in fh.keys()} if raw else {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    if "metareg-fewshot" in header:  # metareg.fewshot_file.FORMAT: the support set travels with it
        raise CheckpointError(f"{str(path)!r} is a .fewshot file (its support set included): predict with "
                              f"`metareg predict -m {path}` or metareg.FewShotClassifier.load")
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("metareg"), dict):
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not a metareg export "
                              "(no metareg metadata); pass a file written by `metareg export --format safetensors`")
    if meta.get("format_version") != EXPORT_VERSION:
        raise CheckpointError(f"{str(path)!r} uses metareg export format {meta.get('format_version')}; "
                              f"this metareg reads format {EXPORT_VERSION}")
    inner = meta["metareg"]
    if inner.get("format") != FORMAT or inner.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} was exported from metareg checkpoint format "
                              f"{inner.get('format_version')}; this metareg reads format {FORMAT_VERSION}")
    return meta, state


def load_safetensors_export(path: str | os.PathLike, registry=None):
    """Rebuild the model of a safetensors export (as :func:`metareg.model_loading.load_model` does for checkpoints)."""
    from metareg.model_loading import model_from_payload

    meta, state = read_safetensors_export(path)
    inner = dict(meta["metareg"])
    invert = meta.get("inputs", {}).get("invert")
    if invert is not None:  # the export may have overridden the training data's convention
        data = dict(inner.get("data", {}))
        data["info"] = {**data.get("info", {}), "invert": bool(invert)}
        inner["data"] = data
    return model_from_payload(inner, state, str(path), registry)
