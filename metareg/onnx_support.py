"""ONNX files that hold the support set (`metareg export -c CKPT --support DIR -o model.onnx`), and
embedding-only graphs (`--embedding-only`).

With stored prototypes a request carries only its query images, not the whole support set:
``images (N, C, H, W) -> probabilities (N, ways), logits (N, ways), features (N, D)``, the
prototypes a constant of the graph. The metadata (``metareg`` key) names the classes in column
order, the preprocessing and the open-set threshold (a query whose largest logit is at or below
``open_set.threshold`` is unknown). Image inputs: file pixels / 255 at the model's size and
channels; inversion and the transform's evaluation step are inside the graph.

The exporter is torch.onnx's TorchScript-based one (``dynamo=False``), as for the other ONNX
files: the torch.export-based exporter needs onnxscript, which metareg does not install.
"""
from __future__ import annotations

import io
import json
import warnings
from typing import Any

import torch
from torch import nn

from metareg.errors import MetaregError


class StoredPrototypes(nn.Module):
    def __init__(self, embedder: nn.Module, head: nn.Module, prototypes: torch.Tensor):
        super().__init__()
        self.embedder, self.head = embedder, head
        self.register_buffer("prototypes", prototypes.detach().float().clone())

    def forward(self, images: torch.Tensor):
        features = self.embedder(images)
        logits = self.head.logits(features, self.prototypes)
        return logits.softmax(-1), logits, features


def onnx_bytes(clf, *, embedding_only: bool = False) -> bytes:
    """An ONNX file of a fitted classifier (stored prototypes), or of its embedding network alone."""
    try:
        import onnx
    except ImportError:
        raise MetaregError("ONNX export needs the 'onnx' package, which is not installed: "
                           "pip install 'metareg[export]' (or pip install onnx)") from None
    from metareg.export import Embedder, describe
    from metareg.fewshot_file import preprocessing

    clf.strategy.cpu().eval()
    clf.transform.cpu().eval()
    embedder = Embedder(clf.strategy.backbone, clf.transform, clf.invert).eval()
    meta: dict[str, Any] = describe(clf.model, clf.invert)
    meta["preprocessing"] = preprocessing(clf)
    if embedding_only:
        module, names = embedder, (["images"], ["features"])
        meta["graph"] = "images (N, C, H, W) -> features (N, D)"
    else:
        head = clf.strategy.export_head()
        if head is None or not callable(getattr(head, "logits", None)) or "prototypes" not in (clf.state or {}):
            raise MetaregError(f"strategy {clf.strategy_name!r} has no prototype head, so its support set cannot be "
                               "stored in an ONNX graph; pass --embedding-only (images -> features), or export a "
                               ".fewshot file")
        module = StoredPrototypes(embedder, head.eval(), clf.state["prototypes"].cpu()).eval()
        names = (["images"], ["probabilities", "logits", "features"])
        meta.update(graph="images (N, C, H, W) -> probabilities (N, ways), logits (N, ways), features (N, D)",
                    classes=list(clf.classes), open_set=clf.open_set)
    axes = {name: {0: "batch"} for name in names[0] + names[1]}
    example = torch.rand(2, clf.channels, clf.image_size, clf.image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), buffer, dynamo=False, dynamic_axes=axes,
                              input_names=names[0], output_names=names[1])
        except Exception as exc:  # noqa: BLE001 - any exporter failure means this model cannot go to ONNX
            raise MetaregError(f"the model cannot be exported to ONNX ({type(exc).__name__}: {exc}); "
                               "export a .fewshot file instead") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "metareg", json.dumps(meta, default=str)
    return proto.SerializeToString()
