"""Registers the Kornia augmentation chains. Factories are lazy so `metareg list` never imports kornia.

The default transform, ``none``, is the core's own (metareg.core_plugin), not this plugin's.
"""
import metareg


@metareg.hookimpl
def metareg_transforms():
    yield metareg.TransformSpec(
        "flash",
        "metareg_kornia.chains:flash",
        summary="Flash's meta-learning chain: flip, rotation, affine, perspective, 4 colour jitters, blur, erasing",
    )
    yield metareg.TransformSpec(
        "lee2019",
        "metareg_kornia.chains:lee2019",
        summary="Standard few-shot chain (MetaOptNet): random crop, flip, colour jitter 0.4, normalisation",
        aliases=("standard",),
    )
    yield metareg.TransformSpec(
        "omniglot",
        "metareg_kornia.chains:omniglot",
        summary="Small affine jitter (rotation, translation, scale) for handwritten characters",
    )
    yield metareg.TransformSpec(
        "compose",
        "metareg_kornia.compose:compose",
        summary="A chain of kornia.augmentation classes listed in the config (names with arguments)",
        test_options={"augmentations": ["RandomHorizontalFlip", {"RandomAffine": {"degrees": 10, "p": 0.5}}]},
    )
