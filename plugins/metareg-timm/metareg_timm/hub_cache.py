"""timm's published weights, from the local caches only (``pretrained=timm``); nothing is downloaded.

timm fetches weights from the Hugging Face Hub (``hf_hub_id`` in a model's pretrained config)
into the Hugging Face cache, or, for older weights, from a URL into torch.hub's
``checkpoints`` folder. This looks in both without touching the network
(``huggingface_hub.try_to_load_from_cache`` only reads the cache), so a model whose weights
were fetched once, on this machine or copied into its cache, works offline. The file found is
then read weights-only like any ``pretrained=PATH``.
"""
from __future__ import annotations

import os
from pathlib import Path

import metareg

# Hub file names timm writes, safetensors first.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
# Weights tags that mean ImageNet (1k, 12k, 21k/22k subsets): the core's leak warning keys on "imagenet".
IMAGENET_TAGS = ("in1k", "in12k", "in21k", "in22k")


def _cfg(model: str):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise metareg.OptionError(f"timm: timm publishes no weights for {model!r}; pass pretrained=PATH instead")
    return cfg


def hub_cache() -> Path:
    """The Hugging Face cache folder, read when asked (huggingface_hub reads its variables once, at import)."""
    import huggingface_hub

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(huggingface_hub.constants.HF_HUB_CACHE)


def cached_weights(model: str) -> Path:
    """The cached weights file of ``model`` (``arch`` or ``arch.tag``), or a one-line error naming where it looked."""
    import huggingface_hub
    import torch

    cfg = _cfg(model)
    looked = []
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES):
            found = huggingface_hub.try_to_load_from_cache(repo, filename, cache_dir=hub_cache())
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        looked.append(f"{repo} in {hub_cache()}")
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    raise metareg.OptionError(
        f"timm: the weights of {model!r} are not in the local cache (looked for {' and '.join(looked)}); metareg "
        f"never downloads them: fetch them once where there is a network (python -c \"import timm; "
        f"timm.create_model('{model}', pretrained=True)\") or pass pretrained=PATH")


def origin_of_tag(model: str) -> str | None:
    """What timm's weights for ``model`` were trained on, read from their tag (``a1_in1k`` -> imagenet)."""
    tag = _cfg(model).tag or ""
    if any(t in tag for t in IMAGENET_TAGS):
        return "imagenet"
    return tag.lower() or None
