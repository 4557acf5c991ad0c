"""Contract checks for plugin authors: call them from your plugin's own tests.

Each check builds a component the way ``metareg run`` does (dataset ``channels`` and
``image_size`` injected where the factory accepts them, options validated by the
same code as ``--backbone-opt`` etc.), exercises the contract on CPU with tiny
inputs, and raises :class:`AssertionError` with a message naming the component and
what broke. The core's own contract suite (``tests/test_contracts.py``) runs the
same checks over every registered component.

Example (a plugin's ``tests/test_plugin.py``)::

    from metareg.testing import check_backbone, check_dataset, check_strategy, check_transform

    def test_backbone():
        check_backbone("tinycnn", shapes=[(1, 28, 28), (3, 32, 32)])

    def test_strategy():
        check_strategy("nearestneighbour")

A component is named by its registered name (looked up among the installed
plugins, so this also proves it is registered) or passed as the factory itself.
A named component is built with the ``test_options`` its record declares (its
smallest valid build) unless ``options`` are given.

:func:`check_combinations` runs a component against every other installed one
(every strategy with every backbone, one training step and one evaluation episode
each), as ``metareg check`` does.

This package is the public facade: one module per kind's check (``backbone.py``,
``dataset.py``, ``transform.py``, ``strategy.py``), the shared find-build-report steps
(``harness.py``) and the synthetic inputs (``synthetic.py``). Import from
``metareg.testing``; the module layout may change.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metareg import kinds
from metareg.testing.backbone import check_backbone
from metareg.testing.dataset import check_dataset
from metareg.testing.strategy import check_strategy
from metareg.testing.synthetic import make_episodes, tiny_backbone
from metareg.testing.transform import check_transform

__all__ = [
    "check_combinations",
    "check_backbone",
    "check_dataset",
    "check_transform",
    "check_strategy",
    "check_component",
    "tiny_backbone",
    "make_episodes",
]


def check_component(kind: str, factory_or_name: str | Callable, **kwargs: Any) -> Any:
    """Dispatch to the check for ``kind`` (backbones, datasets, strategies, transforms; or the singular)."""
    return kinds.get(kind).check_function()(factory_or_name, **kwargs)


def check_combinations(kind: str | None = None, name: str | None = None, *, registry: Any = None) -> list:
    """Run a component against every other installed one, as ``metareg check KIND NAME`` does.

    A strategy is paired with every installed backbone, a backbone with every installed
    strategy, on tiny synthetic episodes of 1x28x28 grey and 3x32x32 RGB images: one
    training step (loss, backward, an optimiser step) and one evaluation episode each,
    every component built at the ``test_options`` its record declares. A transform is
    checked (:func:`check_transform`) on both image kinds. With no ``kind`` and ``name``,
    the whole installed matrix runs.

    Returns the :class:`metareg.combinations.Result` list (``status`` is ``"ok"``,
    ``"refused"`` with the reason, or ``"failed"`` with the error). Raises
    :class:`AssertionError` listing every failed combination, one line each; a refusal
    (a capability the other component lacks, declared with ``requires``/``provides``, or
    a factory that refuses an image kind with a :class:`metareg.MetaregError`) is not a
    failure. ``registry`` defaults to the installed plugins.

    Example (a plugin's ``tests/test_plugin.py``)::

        from metareg.testing import check_combinations

        def test_my_backbone_with_every_strategy():
            results = check_combinations("backbone", "tinycnn")
            assert any(r.status == "ok" for r in results)
    """
    from metareg.combinations import check, failures
    from metareg.registry import Registry

    results = check(registry or Registry.current(), kind, name)
    failed = failures(results)
    if failed:
        raise AssertionError(
            f"{len(failed)} of {len(results)} combinations failed:\n" + "\n".join(f"  {r}" for r in failed)
        )
    return results

