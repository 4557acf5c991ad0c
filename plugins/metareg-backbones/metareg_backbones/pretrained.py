"""Pretrained weights from a local file or the user's cache; never downloaded.

``pretrained`` is either a path to a file, or a name looked up in the weights cache:
``$METAREG_CACHE_DIR/weights/`` when that variable is set, then
``platformdirs.user_cache_dir("metareg")/weights/``, trying the name as given and
with the suffixes ``.safetensors``, ``.pt``, ``.pth``, ``.ckpt``.

Files are read with ``safetensors`` (``.safetensors``) or
``torch.load(weights_only=True)`` (anything else), so no pickled code ever runs.
A Lightning checkpoint (``{"state_dict": ...}``) or a metareg checkpoint whose keys
carry a prefix (``strategy.backbone.``) works: the prefix under which the model's
keys are found is stripped.

Where the weights come from is recorded as ``backbone.pretrained_on``: the
``pretrained_on`` option when given, else ``pretrained_on`` in the safetensors
metadata or the checkpoint dict, else ``"imagenet"`` for torchvision's ImageNet files
(``resnet18-f37072fd.pth``) and files whose name says ``imagenet``, else
``"unknown"``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

import metareg

SUFFIXES = ("", ".safetensors", ".pt", ".pth", ".ckpt")
_TORCHVISION_FILE = re.compile(r"^(resnet\d+|wide_resnet\d+_\d+|resnext\d+_\w+)-[0-9a-f]{6,}\.pth$")
_SHOW = 5


def weights_dirs() -> list[Path]:
    """Where named weights are looked up, in order."""
    dirs = []
    env = os.environ.get("METAREG_CACHE_DIR")
    if env:
        dirs.append(Path(env).expanduser() / "weights")
    import platformdirs

    dirs.append(Path(platformdirs.user_cache_dir("metareg")) / "weights")
    return dirs


def resolve(spec: str, *, name: str = "backbone") -> Path:
    """The file ``spec`` names: a path, or a name in the weights cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    looks_like_path = os.sep in spec or "/" in spec or spec.startswith((".", "~"))
    if looks_like_path:
        raise metareg.OptionError(
            f"{name}: pretrained weights file {spec!r} does not exist. "
            f"Pass the path of a .safetensors/.pt/.pth/.ckpt file, or a file name from {weights_dirs()[0]}."
        )
    searched = []
    for d in weights_dirs():
        for suffix in SUFFIXES:
            candidate = d / f"{spec}{suffix}"
            if candidate.is_file():
                return candidate
        searched.append(str(d))
    raise metareg.OptionError(
        f"{name}: pretrained weights {spec!r} not found; looked for {spec!r} (with suffixes "
        f"{', '.join(s for s in SUFFIXES if s)}) in: {'; '.join(searched)}. metareg never downloads weights: "
        f"put the file in one of these folders (or set METAREG_CACHE_DIR), or pass its path."
    )


def read_state(path: Path, *, name: str = "backbone") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors in ``path`` and any string metadata stored with them."""
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise metareg.OptionError(f"{name}: cannot read safetensors file {path}: {e}") from None
        return state, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    # Whatever a damaged or foreign file makes the unpickler raise (bytes that are no pickle raise IndexError:
    # "pop from empty list"), it is bad input to name in one line, not a bug of the backbone.
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise metareg.OptionError(
            f"{name}: cannot load {path} with torch.load(weights_only=True): {first}. "
            f"Only plain tensors / state dicts are accepted (re-save with torch.save(model.state_dict(), ...) "
            f"or use safetensors)."
        ) from None
    if isinstance(obj, dict):
        for key in ("pretrained_on",):
            if isinstance(obj.get(key), str):
                meta[key] = obj[key]
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise metareg.OptionError(f"{name}: {path} holds a {type(obj).__name__}, not a state dict of tensors")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise metareg.OptionError(f"{name}: {path} contains no tensors")
    return state, meta


def _best_prefix(model_keys: list[str], ckpt_keys: list[str]) -> str:
    """The prefix under which most of the model's keys appear in the checkpoint ('' when none helps)."""
    wanted = set(model_keys)
    direct = len(wanted & set(ckpt_keys))
    if direct == len(wanted):
        return ""
    candidates: set[str] = set()
    probe = model_keys[0]
    for k in ckpt_keys:
        if k.endswith(probe) and k != probe:
            candidates.add(k[: -len(probe)])
    best, best_hits = "", direct
    for prefix in candidates:
        hits = sum(1 for k in model_keys if prefix + k in ckpt_keys)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (and {len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def match_state(model: nn.Module, state: dict[str, torch.Tensor], *, name: str, source: str) -> dict[str, torch.Tensor]:
    """Map checkpoint tensors onto ``model``'s keys, or raise an error that lists what differs."""
    own = model.state_dict()
    ignore = tuple(getattr(model, "pretrained_ignore", ()))
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    model_keys = list(own)
    prefix = _best_prefix(model_keys, list(state))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    # Older checkpoints lack BatchNorm's num_batches_tracked: keep the model's own.
    missing = [k for k in model_keys if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{name}: the weights in {source} do not fit this backbone"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        raise metareg.OptionError(
            "; ".join(parts) + ". Check that the file was saved from the same backbone with the same options "
            "(widths, depth, stem)."
        )
    input_conv = getattr(model, "input_conv", None)
    out, mismatched = {}, []
    for k, v in state.items():
        target = own[k]
        if v.shape != target.shape and k == input_conv and v.dim() == 4 and v.shape[0] == target.shape[0] \
                and v.shape[2:] == target.shape[2:]:
            v = adapt_input_conv(v, target.shape[1])
        if v.shape != target.shape:
            mismatched.append(f"{k} (file {tuple(v.shape)}, backbone {tuple(target.shape)})")
            continue
        out[k] = v.to(dtype=target.dtype)
    if mismatched:
        raise metareg.OptionError(
            f"{name}: {len(mismatched)} tensor(s) in {source} have the wrong shape: {_listing(mismatched)}. "
            f"Check the backbone options (widths, stem / small_input) match those the weights were trained with."
        )
    for k in model_keys:
        if k not in out:
            out[k] = own[k]
    return out


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Fit a first-conv weight ``(out, c, k, k)`` to ``channels`` input channels.

    RGB -> grayscale sums the colour filters (a gray image is R = G = B, so the
    response is unchanged); other counts tile the filters and rescale.
    """
    have = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-channels // have)
    return weight.repeat(1, reps, 1, 1)[:, :channels] * (have / channels)


def guess_origin(path: Path, meta: dict[str, str]) -> str:
    if meta.get("pretrained_on"):
        return meta["pretrained_on"].lower()
    if "imagenet" in path.name.lower() or _TORCHVISION_FILE.match(path.name):
        return "imagenet"
    return "unknown"


def load_pretrained(model: nn.Module, spec: str, *, name: str, pretrained_on: str | None = None) -> nn.Module:
    """Load weights named by ``spec`` into ``model`` and record where they came from."""
    path = resolve(spec, name=name)
    state, meta = read_state(path, name=name)
    matched = match_state(model, state, name=name, source=str(path))
    model.load_state_dict(matched, strict=True)
    model.pretrained_from = str(path)
    model.pretrained_on = pretrained_on.lower() if pretrained_on else guess_origin(path, meta)
    return model
