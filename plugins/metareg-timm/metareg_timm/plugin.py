"""Registers the ``timm`` backbone. The factory is lazy: `metareg list` never imports timm or torch.

``test_options`` is the combination matrix's build: ResNet-10-T (4.9M parameters, 512-d features), small
and quick on a CPU at 28 and 32 pixels. No ``functional`` capability: timm's models are not all pure
functions of their parameters (some keep state outside BatchNorm, some use timm's own norm layers), so
MAML-style strategies refuse the combination up front instead of failing inside a model.
"""
import metareg


@metareg.hookimpl
def metareg_backbones():
    yield metareg.BackboneSpec(
        "timm",
        "metareg_timm.backbone:timm_backbone",
        summary="Any timm model (option model=NAME) as a feature extractor: no classifier, pooled features",
        test_options={"model": "resnet10t"},
    )
