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
        "imagefolder", "metareg_datasets.imagefolder:imagefolder",
        summary="Your own images: root/<class>/*.png|jpg, with train/val/test folders or split by ratio",
    )
