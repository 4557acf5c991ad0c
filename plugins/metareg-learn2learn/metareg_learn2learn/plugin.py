"""Registers learn2learn's components. Factories are lazy: `metareg list` never imports learn2learn.

When learn2learn (or gym, which `import learn2learn` needs) is missing, importing this
module raises ImportError saying how to get it; metareg then lists this plugin as broken
with that message and everything else keeps working.
"""
import importlib.util

import metareg
from metareg_learn2learn.install import INSTALL_HINT  # the command that ships with this package

for _module in ("learn2learn", "gym"):
    if importlib.util.find_spec(_module) is None:
        raise ImportError(f"{_module} is not installed (the learn2learn plugin needs it): {INSTALL_HINT}")

_DATASETS = (
    ("l2l-miniimagenet", "mini_imagenet", "miniImageNet 84x84, 64/16/20 classes (learn2learn's pickles)", ()),
    ("l2l-tieredimagenet", "tiered_imagenet", "tieredImageNet 84x84, 351/97/160 classes (learn2learn's pickles)", ()),
    ("l2l-cifarfs", "cifarfs", "CIFAR-FS 32x32, 64/16/20 CIFAR-100 classes (Bertinetto et al.)", ("cifar-fs",)),
    ("l2l-fc100", "fc100", "FC100 32x32, 60/20/20 CIFAR-100 classes split by superclass (Oreshkin et al.)", ()),
    ("l2l-cub", "cub200", "CUB-200-2011 birds, 140/30/30 classes (Triantafillou et al. splits)", ("l2l-cubirds200",)),
    ("l2l-aircraft", "aircraft", "FGVC-Aircraft, 70/15/15 variants (Triantafillou et al. splits)", ()),
    ("l2l-vggflowers", "vgg_flowers", "VGG Flowers 102, 71/15/16 classes (Triantafillou et al. splits)", ()),
    ("l2l-dtd", "dtd", "Describable Textures, 33/7/7 classes (Triantafillou et al. splits)", ()),
    ("l2l-quickdraw", "quickdraw", "Quickdraw 28x28 sketches, 241/52/52 classes (needs gsutil to download)", ()),
    ("l2l-fungi", "fungi", "FGVCx Fungi 2018, 994/200/200 classes (Triantafillou et al. splits)", ()),
    ("l2l-omniglot", "omniglot", "Full Omniglot, 1623 characters split 1100/100/423 at random (as learn2learn)", ()),
)


@metareg.hookimpl
def metareg_datasets():
    for name, attr, summary, aliases in _DATASETS:
        yield metareg.DatasetSpec(name, f"metareg_learn2learn.datasets:{attr}", summary=summary, aliases=aliases)


@metareg.hookimpl
def metareg_backbones():
    yield metareg.BackboneSpec(
        "l2l-cnn4", "metareg_learn2learn.models:cnn4", summary="learn2learn's CNN4 trunk (conv-BN-ReLU-maxpool x4)",
        provides={"functional"},  # runs under MAML's torch.func inner loop (`metareg check` verifies it)
        test_options={"hidden_size": 8},
    )
    yield metareg.BackboneSpec(
        "l2l-resnet12", "metareg_learn2learn.models:resnet12", summary="learn2learn's ResNet-12 trunk with DropBlock",
        provides={"functional"},
        test_options={"wider": False, "dropblock_dropout": 0.0},
    )
    yield metareg.BackboneSpec(
        "l2l-wrn28", "metareg_learn2learn.models:wrn28", summary="learn2learn's WRN-28-10 trunk, 640-d features",
        # Needs 84-pixel images, which the combination matrix does not use: MAML with it was run by hand
        # (one training step and one evaluation episode on 3x84x84 episodes, 63 s of CPU).
        provides={"functional"},
    )


@metareg.hookimpl
def metareg_strategies():
    yield metareg.StrategySpec(
        "l2l-metasgd",
        "metareg_learn2learn.strategies:MetaSGD",
        summary="Meta-SGD via learn2learn: a linear head adapted with learned per-parameter step sizes",
    )
    yield metareg.StrategySpec(
        "l2l-metacurvature",
        "metareg_learn2learn.strategies:MetaCurvature",
        summary="Meta-Curvature via learn2learn's GBML: a head adapted with a learned gradient preconditioner",
    )
