"""Registers the first-party transforms. Factories are lazy so `metareg list` never imports kornia."""
import metareg


@metareg.hookimpl
def metareg_transforms():
    yield metareg.TransformSpec(
        "none",
        "metareg_kornia.chains:identity",
        summary="No augmentation: images pass through unchanged",
        aliases=("identity",),
    )
