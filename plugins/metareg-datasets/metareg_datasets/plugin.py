"""Registers the first-party datasets. Factories are lazy so `metareg list` stays light."""
import metareg


@metareg.hookimpl
def metareg_datasets():
    yield from ()
