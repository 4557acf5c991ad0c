"""Recipes: versioned run settings that follow a paper, each tied to one row of one of its tables.

One YAML file per recipe in this folder (shipped as package data): a ``recipe:`` header
(version, paper, table row, published accuracy, evaluation protocol, image shape, data files,
deviations from the paper) and ordinary RunConfig settings beside it. ``metareg recipes``
lists them, ``metareg run --recipe NAME`` starts from one, ``metareg reproduce NAME`` runs one
and compares its accuracy with the paper's. The loader is :mod:`metareg.recipes.recipe`.
"""
from __future__ import annotations

from metareg.recipes.recipe import Recipe, find, load, load_all, names, verdict

__all__ = ["Recipe", "find", "load", "load_all", "names", "verdict"]
