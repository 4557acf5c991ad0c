"""The support cache of ``metareg predict --cache``: a strategy's support state, saved and reused.

A safetensors file holds the state tensors and, in its metadata, a key: a hash of the model
(its file's bytes, or its weights), the preparation settings, the class names and every support
item (a file's path, size and modification time; an in-memory image's bytes). A different key
means another support set, model or preparation, and the state is recomputed; an unreadable file
is reported and recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

CACHE_FORMAT = "metareg-support-cache"
CACHE_VERSION = 1


def cache_key(model_digest: str, settings: Sequence[Any], classes: list[str],
              items: Mapping[str, Sequence[Any]]) -> str:
    """The key of a support state: the model, how images are prepared, the classes and every item."""
    h = hashlib.blake2b(digest_size=20)
    parts = [CACHE_FORMAT, CACHE_VERSION, model_digest, *settings, json.dumps(classes)]
    h.update(repr(parts).encode())
    for name, xs in items.items():
        for x in xs:
            h.update(f"{name}\0{_fingerprint(x)}\n".encode())
    return h.hexdigest()


def _fingerprint(item: Any) -> str:
    """What identifies a support item for the cache: a file's path, size and modification time."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        st = Path(item).stat()
        return f"file:{Path(item).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.blake2b(digest_size=16)
    if isinstance(item, Image.Image):
        h.update(f"{item.mode}{item.size}".encode())
        h.update(item.tobytes())
    else:
        t = torch.as_tensor(item).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "data:" + h.hexdigest()


def weights_digest(*modules) -> str:
    h = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, value in module.state_dict().items():
            h.update(name.encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_cache(path: Path, key: str, classes: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError("not a metareg support cache")
            if meta.get("key") != key or json.loads(meta.get("classes", "[]")) != classes:
                return None  # another support set, model or preparation: recompute
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        warnings.warn(f"metareg: support cache {str(path)!r} is unreadable ({exc}); recomputing it",
                      RuntimeWarning, stacklevel=3)
        return None


def write_cache(path: Path, key: str, classes: list[str], state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from metareg.files import atomic_write

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "key": key, "classes": json.dumps(classes)}
    atomic_write(path, save(tensors, metadata=meta))
