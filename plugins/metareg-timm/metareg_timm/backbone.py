"""Any timm model as a metareg backbone: ``--backbone timm --backbone-opt model=resnet50``.

The model is built by ``timm.create_model`` as a feature extractor: no classifier
(``num_classes=0``), its own global pooling, so ``forward`` gives one flat embedding per
image. It takes the dataset's channel count (``in_chans``), and models with a fixed input
size (ViTs, Swin: timm's ``fixed_input_size``) are built for the dataset's image size
(``img_size``); a probe forward at that size checks the output and measures
``out_features`` before any training starts.

Weights are never downloaded. ``pretrained=PATH`` (or a name in metareg's weights cache)
is read weights-only by metareg-backbones' loader, as for its own backbones: the classifier
in the file is ignored, RGB input filters are summed for grey images, a metareg checkpoint's
prefix is stripped, and the model's own timm checkpoint filter (a ViT's position embeddings
resampled to the image size) runs first. ``pretrained=timm`` takes the weights timm publishes
for ``model`` from the local Hugging Face cache (metareg_timm.hub_cache). The fine-tuning
schedules (``finetune``, ``unfreeze_epoch``) and ``pretrained_on`` are metareg-backbones'.
Normalisation stays the transform's business, as with every backbone: timm's ImageNet
weights expect ImageNet's mean and std (``--transform`` with ``mean=``/``std=`` options).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path

import torch
from metareg_backbones.base import Backbone
from torch import nn

import metareg

NAME = "timm"


class TimmBackbone(Backbone):
    """A timm model under ``net`` (its parameter names are timm's, behind the prefix ``net.``)."""

    def __init__(self, net: nn.Module, model: str, out_features: int):
        super().__init__()
        self.net, self.model_name, self.out_features = net, model, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _arch_and_tag(model: str) -> tuple[str, str]:
    arch, _, tag = model.partition(".")
    return arch, tag


def check_model_name(model: str) -> None:
    """Refuse a name timm does not know, with the closest names it does."""
    import timm

    arch, tag = _arch_and_tag(model)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise metareg.OptionError(
            f"{NAME}: model {model!r} is not a timm model{hint} (python -c \"import timm; "
            f"print(timm.list_models('*{arch[:4]}*'))\" lists timm's names)")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
        raise metareg.OptionError(
            f"{NAME}: timm has no weights tagged {tag!r} for {arch}; its tags are {', '.join(tags) or 'none'}")


def _create(model: str, channels: int, image_size: int) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _ = _arch_and_tag(model)
    cfg = get_pretrained_cfg(model) if "." in model else get_pretrained_cfg(arch)
    size = {"img_size": image_size} if cfg is not None and cfg.fixed_input_size else {}
    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, in_chans=channels, **size)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise metareg.OptionError(f"{NAME}: timm cannot build {model!r} for {channels}-channel "
                                  f"{image_size}x{image_size} images: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _probe(net: nn.Module, model: str, channels: int, image_size: int) -> int:
    """The embedding size, from one forward at the dataset's size; refuse a model that cannot take it."""
    was_training = net.training
    net.eval()  # BatchNorm statistics stay untouched
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise metareg.OptionError(
            f"{NAME}: {model!r} cannot take {channels}x{image_size}x{image_size} images ({_first_line(e)}); "
            f"choose a model that accepts this size or a dataset image_size it accepts") from None
    finally:
        net.train(was_training)
    if out.dim() != 2:
        raise metareg.OptionError(
            f"{NAME}: {model!r} gives features of shape {tuple(out.shape[1:])} per image, not one flat "
            f"embedding (it has no global pooling); choose a model with pooled features")
    return int(out.shape[1])


def _checkpoint_filter(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own timm checkpoint filter (e.g. ViT position embeddings resampled), when it has one."""
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if fn is None or not set(state) & set(net.state_dict()):
        return state  # a prefixed (metareg) checkpoint of this very backbone needs no filtering
    try:
        return fn(state, net)
    except Exception:  # noqa: BLE001 - a filter that does not apply leaves the state to the key check
        return state


def load_weights(backbone: TimmBackbone, spec: str, *, pretrained_on: str | None) -> None:
    """Load ``spec`` (a file, a weights-cache name, or ``timm``) into ``backbone.net``; record the origin."""
    from metareg_backbones.pretrained import guess_origin, match_state, read_state, resolve

    from metareg_timm.hub_cache import cached_weights, origin_of_tag

    net, model = backbone.net, backbone.model_name
    if spec == "timm":
        path = cached_weights(model)
        origin = origin_of_tag(model)
    else:
        path, origin = resolve(spec, name=NAME), None
    state, meta = read_state(Path(path), name=NAME)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    # What metareg-backbones' matcher reads: the input conv to adapt and the classifier to ignore.
    first = cfg.get("first_conv")
    net.input_conv = f"{first}.weight" if isinstance(first, str) else None
    heads = cfg.get("classifier") or ()
    net.pretrained_ignore = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    matched = match_state(net, _checkpoint_filter(net, state), name=NAME, source=str(path))
    net.load_state_dict(matched, strict=True)
    backbone.pretrained_from = str(path)
    backbone.pretrained_on = (pretrained_on.lower() if pretrained_on
                              else origin or guess_origin(Path(path), meta))


@metareg.pretraining_options
def timm_backbone(
    *,
    channels: int = 3,
    image_size: int = 84,
    model: str = "resnet50",
    pretraining: metareg.Pretraining,
) -> nn.Module:
    """Any timm model as a feature extractor: no classifier, globally pooled features; weights never downloaded.

    model: a timm model name (timm.list_models()), optionally with a weights tag (resnet50.a1_in1k);
        pretrained=timm takes timm's published weights for it from the local Hugging Face cache.
    """
    check_model_name(model)
    pretraining.check(NAME)
    net = _create(model, channels, image_size)
    backbone = TimmBackbone(net, model, _probe(net, model, channels, image_size))
    if pretraining.pretrained is not None:
        load_weights(backbone, pretraining.pretrained, pretrained_on=pretraining.pretrained_on)
    backbone.set_pretraining(pretraining)
    return backbone
