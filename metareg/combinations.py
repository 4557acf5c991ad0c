"""The combination matrix: every installed strategy with every backbone, every transform, on both image kinds.

Composition is what metareg promises, so it is checked the way a run composes:
components are resolved by the registry and built by :mod:`metareg.build` at the
size each one declares in its record's ``test_options``; a strategy and a backbone
then take one training step (loss, backward, optimiser step) and one evaluation
episode on tiny synthetic episodes; a transform goes through the contract check of
:func:`metareg.testing.check_transform`. Each combination ends in one of:

* ``ok``;
* ``refused``: the components said up front that they cannot work together, with
  the reason: a declared capability is missing (see :func:`metareg.records.refusal`,
  the same check ``metareg run`` makes), or a factory refused the image kind with a
  :class:`metareg.MetaregError` before any work;
* ``failed``: anything else, with the error in one line. A failure is a bug in one
  of the two components (or in metareg).

``metareg check`` prints the results; :func:`metareg.testing.check_combinations`
raises on failures for a plugin's own test suite; ``tests/test_combinations.py``
makes each combination one test case.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metareg import kinds
from metareg.errors import MetaregError
from metareg.records import refusal
from metareg.registry import Registry

# (channels, image_size): Omniglot-like grey characters and CIFAR-like colour images.
IMAGE_KINDS: tuple[tuple[int, int], ...] = ((1, 28), (3, 32))
# Episodes small enough that the whole matrix runs in about a minute on a CPU.
WAYS, SHOTS, QUERIES, META_BATCH, TRAIN_CLASSES = 3, 2, 2, 2, 6
OK, REFUSED, FAILED = "ok", "refused", "failed"


@dataclass(frozen=True)
class Combination:
    """Components (``(kind, qualified name)`` pairs) to be run together on one image kind.

    ``shown`` holds the names to print: the plain names, qualified only where two plugins
    register the same name."""

    parts: tuple[tuple[str, str], ...]
    channels: int
    image_size: int
    shown: tuple[str, ...] = ()

    @property
    def components(self) -> str:
        names = self.shown or tuple(name for _, name in self.parts)
        if len(self.parts) == 1:
            return f"{kinds.get(self.parts[0][0]).singular} {names[0]}"
        return " + ".join(names)

    @property
    def image(self) -> str:
        return f"{self.channels}x{self.image_size}x{self.image_size}"

    @property
    def label(self) -> str:
        return f"{self.components} @ {self.image}"


@dataclass(frozen=True)
class Result:
    combination: Combination
    status: str  # OK, REFUSED or FAILED
    detail: str = ""  # the reason (refused) or the error (failed), one line

    def __str__(self) -> str:
        return f"{self.combination.label}: {self.status}" + (f" ({self.detail})" if self.detail else "")


class Refused(Exception):
    """The components declined the combination up front."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (MetaregError, AssertionError, Refused)):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- what to run


def combinations(registry: Registry, kind: str | None = None, name: str | None = None) -> list[Combination]:
    """The matrix for everything installed, or for one component (``kind``, ``name``) against the rest.

    Strategies pair with every backbone, backbones with every strategy, on each of
    :data:`IMAGE_KINDS`; transforms are checked alone on each image kind. Datasets are
    not part of the matrix (they fix their own image kind; check one with
    :func:`metareg.testing.check_dataset`).
    """
    def listed(kind: str) -> list[tuple[str, str]]:
        """(qualified name, name to show) of every component of ``kind``."""
        conflicts = registry.conflicts(kind)
        return [(p.qualified_name, p.qualified_name if p.record.name in conflicts else p.record.name)
                for p in registry.components(kind)]

    S, B, T = kinds.STRATEGY.plural, kinds.BACKBONE.plural, kinds.TRANSFORM.plural
    strategies, backbones, transforms = listed(S), listed(B), listed(T)
    if kind is not None:
        chosen_kind = kinds.get(kind)
        kind = chosen_kind.plural
        if name is None:
            raise MetaregError(f"name the {chosen_kind.singular} to check, "
                               f"e.g. `metareg check {chosen_kind.singular} NAME`")
        if chosen_kind is kinds.DATASET:
            raise MetaregError(
                "datasets are not part of the combination matrix (each fixes its own image kind); "
                "check a dataset with metareg.testing.check_dataset, or `metareg check` a strategy or backbone"
            )
        chosen = registry.get(kind, name).qualified_name
        strategies = [s for s in strategies if s[0] == chosen] if kind == S else strategies
        backbones = [b for b in backbones if b[0] == chosen] if kind == B else backbones
        transforms = [t for t in transforms if t[0] == chosen] if kind == T else []
        if kind == T:
            strategies = []
    out = []
    for s, s_shown in strategies:
        for b, b_shown in backbones:
            for channels, size in IMAGE_KINDS:
                out.append(Combination(((S, s), (B, b)), channels, size, (s_shown, b_shown)))
    for t, t_shown in transforms:
        for channels, size in IMAGE_KINDS:
            out.append(Combination(((T, t),), channels, size, (t_shown,)))
    return out


def check(registry: Registry, kind: str | None = None, name: str | None = None, *,
          progress: Any = None) -> list[Result]:
    """Run :func:`combinations` and return one :class:`Result` each (``progress(result)`` after each)."""
    results = []
    for combo in combinations(registry, kind, name):
        result = run_combination(registry, combo)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


# ----------------------------------------------------------------------------- running one


def run_combination(registry: Registry, combo: Combination) -> Result:
    """Run one combination; never raises for a component's fault (that is a ``failed`` result)."""
    import torch

    threads = torch.get_num_threads()
    # One thread: on these tiny batches thread start-up and spinning cost more than they save
    # (MAML with ResNet-18: 1.2 s of CPU with 1 thread against 5.4 s with 2, on the 2-core CI box).
    torch.set_num_threads(1)
    try:
        # Every combination starts from the same random state, so a result never depends on the order.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _run(registry, combo)
    except Refused as exc:
        return Result(combo, REFUSED, _one_line(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any error of a component is a result, not a crash
        return Result(combo, FAILED, _one_line(exc))
    finally:
        torch.set_num_threads(threads)
    return Result(combo, OK)


def _resolve(registry: Registry, kind: str, name: str):
    """Resolve at the declared test size; a ``test_options`` the factory rejects is the plugin's bug."""
    from metareg.build import resolve

    provided = registry.get(kind, name)
    try:
        return resolve(registry, kind, name, dict(provided.record.test_options))
    except MetaregError as exc:
        raise AssertionError(f"{kinds.get(kind).singular} {provided.record.name!r} (test_options "
                             f"{dict(provided.record.test_options)}): {_one_line(exc)}") from exc


def _run(registry: Registry, combo: Combination) -> None:
    resolved = {kind: _resolve(registry, kind, name) for kind, name in combo.parts}
    reason = refusal({kind: r.provider.record for kind, r in resolved.items()})
    if reason:
        raise Refused(reason)
    if kinds.STRATEGY.plural in resolved:
        _train_and_evaluate(resolved[kinds.STRATEGY.plural], resolved[kinds.BACKBONE.plural], combo.channels,
                            combo.image_size)
    else:
        _transform(resolved[kinds.TRANSFORM.plural], combo.channels, combo.image_size)


def _build(build, **injected):
    """Build components; a :class:`MetaregError` from a factory is its refusal of this input, up front.

    (The factory's message names itself, as in ``metareg run``; the combination names the rest.)"""
    try:
        return build(**injected)
    except MetaregError as exc:
        raise Refused(_one_line(exc)) from exc


def _transform(resolved, channels: int, image_size: int) -> None:
    from metareg.testing import check_transform

    label = f"transform {resolved.name!r}"
    _build(resolved.build, channels=channels, image_size=image_size)  # refusals surface here
    try:
        check_transform(resolved.factory, channels=channels, image_size=image_size, options=resolved.options)
    except AssertionError as exc:
        raise AssertionError(f"{label}: {_one_line(exc)}") from exc


def _train_and_evaluate(strategy_r, backbone_r, channels: int, image_size: int) -> None:
    import torch

    from metareg.build import Components, build_model
    from metareg.config import RunConfig

    config = RunConfig(strategy=strategy_r.name, backbone=backbone_r.name, ways=WAYS, shots=SHOTS,
                       queries=QUERIES, meta_batch_size=META_BATCH)
    identity = _Identity()
    components = Components(dataset=None, backbone=backbone_r, transform=identity, strategy=strategy_r)
    strategy, _, _ = _build(lambda: build_model(components, config, channels, image_size, TRAIN_CLASSES))
    if strategy.channels_last:  # as the learner does when the run leaves channels_last unset
        strategy = strategy.to(memory_format=torch.channels_last)

    with _stage("training step"):
        _train_step(strategy, channels, image_size)
    with _stage("evaluation"):
        _evaluate(strategy, channels, image_size)


@contextlib.contextmanager
def _stage(what: str):
    try:
        yield
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - say which stage broke
        raise AssertionError(f"{what}: {_one_line(exc)}") from exc


def _train_step(strategy, channels: int, image_size: int) -> None:
    """One step as the learner takes it: loss, backward, an optimiser step that moves the backbone."""
    import torch

    from metareg.testing import make_episodes

    strategy.train()
    optimiser = torch.optim.Adam(strategy.parameters(), lr=1e-3)
    if strategy.train_batches == "labelled":
        images = torch.rand(TRAIN_CLASSES * 2, channels, image_size, image_size)
        out = strategy.labelled_loss(images, torch.arange(TRAIN_CLASSES).repeat(2))
    else:
        out = strategy.loss(make_episodes(meta_batch=META_BATCH, ways=WAYS, shots=SHOTS, queries=QUERIES,
                                          channels=channels, image_size=image_size, seed=0))
    loss = out.loss
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss)):
        raise AssertionError(f"the loss is not a finite scalar: {loss!r}")
    if not loss.requires_grad:
        raise AssertionError("the loss does not require grad, nothing would be trained")
    loss.backward()
    params = [p for p in strategy.backbone.parameters() if p.requires_grad]
    if not any(p.grad is not None for p in params):
        raise AssertionError("no gradient reached the backbone's parameters: it would never train")
    before = [p.detach().clone() for p in params]
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    # A loss of exactly zero (easy synthetic classes, far-apart features) has zero gradients: nothing to move.
    if loss.item() > 0 and all(torch.equal(a, b) for a, b in zip(params, before, strict=True)):
        raise AssertionError("the optimiser step changed none of the backbone's parameters")
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise AssertionError("the backbone's parameters are no longer finite after one step")



def _evaluate(strategy, channels: int, image_size: int) -> None:
    """One evaluation episode: finite logits of the right shape."""
    import torch

    from metareg.testing import make_episodes

    strategy.eval()
    episode = make_episodes(meta_batch=1, ways=WAYS, shots=SHOTS, queries=QUERIES, channels=channels,
                            image_size=image_size, seed=1)
    with torch.set_grad_enabled(bool(strategy.needs_grad_at_eval)):
        logits = strategy(episode)
    expected = (1, WAYS * QUERIES, WAYS)
    if not (isinstance(logits, torch.Tensor) and tuple(logits.shape) == expected):
        raise AssertionError(f"logits of shape {tuple(getattr(logits, 'shape', ()))}, "
                             f"expected (episodes, queries, ways) = {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise AssertionError("NaN or infinite logits")


class _Identity:
    """Stands in for the transform's resolved entry: the strategy matrix trains on plain images."""

    name = "none"
    built: Any = None

    def build(self, **injected):
        from metareg.transform import Transform

        self.built = Transform()
        return self.built


def failures(results: Iterable[Result]) -> list[Result]:
    return [r for r in results if r.status == FAILED]
