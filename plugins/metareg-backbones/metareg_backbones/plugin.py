"""Registers the first-party backbones. Factories are lazy so `metareg list` stays light."""
import metareg


@metareg.hookimpl
def metareg_backbones():
    yield metareg.BackboneSpec(
        "conv4",
        "metareg_backbones.conv:conv4",
        summary="Conv-4: four 3x3 conv-BN-ReLU-maxpool blocks (64 filters), the few-shot standard",
        aliases=("cnn4",),
    )
