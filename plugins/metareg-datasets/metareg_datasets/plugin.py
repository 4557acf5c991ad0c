"""Registers the first-party datasets. Factories are lazy so `metareg list` stays light."""
import metareg


@metareg.hookimpl
def metareg_datasets():
    yield metareg.DatasetSpec(
        "glyphs", "metareg_datasets.glyphs:glyphs",
        summary="Omniglot-like characters rendered from matplotlib's fonts (embedded default, no download)",
    )
    yield metareg.DatasetSpec(
        "omniglot", "metareg_datasets.omniglot:omniglot",
        summary="Omniglot handwritten characters from the official zips; Vinyals or Lake split, rotations",
    )
    yield metareg.DatasetSpec(
        "miniimagenet", "metareg_datasets.miniimagenet:miniimagenet", aliases=("mini-imagenet",),
        summary="miniImageNet 84x84 (64/16/20 classes) from learn2learn pickles or Ravi-Larochelle CSVs",
    )
    yield metareg.DatasetSpec(
        "tieredimagenet", "metareg_datasets.tieredimagenet:tieredimagenet", aliases=("tiered-imagenet",),
        summary="tieredImageNet 84x84 (351/97/160 classes, 20/6/8 categories) from Ren et al.'s PNG pickles or npz",
    )
    yield metareg.DatasetSpec(
        "cifarfs", "metareg_datasets.cifar_fewshot:cifarfs",
        summary="CIFAR-FS 32x32 (published 64/16/20 class lists) from the official CIFAR-100 archive or MetaOptNet",
    )
    yield metareg.DatasetSpec(
        "fc100", "metareg_datasets.cifar_fewshot:fc100",
        summary="FC100 32x32 (CIFAR-100 by superclass, 12/4/4 = 60/20/20) from the official archive or MetaOptNet",
    )
    yield metareg.DatasetSpec(
        "imagefolder", "metareg_datasets.imagefolder:imagefolder",
        summary="Your own images: root/<class>/*.png|jpg, with train/val/test folders or split by ratio",
    )
