"""Registers the first-party datasets. Factories are lazy so `metareg list` stays light."""
import metareg


@metareg.hookimpl
def metareg_datasets():
    yield metareg.DatasetSpec(
        "glyphs", "metareg_datasets.glyphs:glyphs",
        summary="Omniglot-like characters rendered from matplotlib's fonts (embedded default, no download)",
    )
