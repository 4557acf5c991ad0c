"""Registers the first-party backbones. Factories are lazy so `metareg list` stays light.

Every backbone here provides "functional": its forward is a pure function of its parameters
and input (state is only in BatchNorm modules, which MAML swaps for batch statistics), so
torch.func can batch it over episodes and differentiate it twice; `metareg check` verifies it.
``test_options`` are the smallest builds, for the combination matrix.
"""
import metareg

FUNCTIONAL = frozenset({"functional"})


@metareg.hookimpl
def metareg_backbones():
    yield metareg.BackboneSpec(
        "conv4",
        "metareg_backbones.conv:conv4",
        summary="Conv-4: four 3x3 conv-BN-ReLU-maxpool blocks (64 filters), the few-shot standard",
        aliases=("cnn4",),
        provides=FUNCTIONAL,
        test_options={"hidden": 8},
    )
    yield metareg.BackboneSpec(
        "conv4-omniglot",
        "metareg_backbones.conv:conv4_omniglot",
        summary="MAML's Omniglot Conv-4: stride-2 convs instead of max-pool, 64-d averaged features",
        provides=FUNCTIONAL,
        test_options={"hidden": 8},
    )
    yield metareg.BackboneSpec(
        "resnet12",
        "metareg_backbones.resnet12:resnet12",
        summary="ResNet-12 of MetaOptNet (widths 64-160-320-640, optional DropBlock), 640-d features",
        provides=FUNCTIONAL,
        test_options={"widths": [8, 8, 16, 16]},
    )
    yield metareg.BackboneSpec(
        "resnet18",
        "metareg_backbones.resnet:resnet18",
        summary="torchvision ResNet-18 trunk (no classifier), small-image stem for <= 32 px, 512-d features",
        provides=FUNCTIONAL,
        test_options={"width": 8},
    )
    yield metareg.BackboneSpec(
        "wrn28",
        "metareg_backbones.wrn:wrn28",
        summary="Wide ResNet WRN-28-10 (pre-activation, width option), 640-d features",
        aliases=("wrn",),
        provides=FUNCTIONAL,
        test_options={"depth": 10, "widen_factor": 1},
    )
