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
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

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

_KIND_FLAGS = {"backbones": "backbone", "datasets": "dataset", "strategies": "strategy", "transforms": "transform"}


def _resolve(kind: str, factory_or_name: str | Callable) -> tuple[Callable, str]:
    factory, label, _ = _resolve_with_options(kind, factory_or_name)
    return factory, label


def _resolve_with_options(kind: str, factory_or_name: str | Callable) -> tuple[Callable, str, dict[str, Any]]:
    """The factory, a label for messages, and the test-sized options a registered record declares."""
    if isinstance(factory_or_name, str):
        from metareg.registry import Registry

        entry = Registry.current().get(kind, factory_or_name)
        return entry.record.load(), f"{_KIND_FLAGS[kind]} {entry.record.name!r}", dict(entry.record.test_options)
    if not callable(factory_or_name):
        raise TypeError(f"expected a registered name or a factory, got {factory_or_name!r}")
    name = getattr(factory_or_name, "__qualname__", repr(factory_or_name))
    return factory_or_name, f"{_KIND_FLAGS[kind]} {name}", {}


def _build(factory: Callable, label: str, options: dict[str, Any] | None, **injected: Any) -> Any:
    from metareg.options import bind

    kwargs = bind(factory, dict(options or {}), component=label, injected=injected)
    return factory(**kwargs)


def _require(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise AssertionError(f"{label}: {message}")


def _call(label: str, what: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the step that failed
        raise AssertionError(f"{label}: {what} failed: {type(exc).__name__}: {exc}") from exc


def _grad_report(params: Iterable[tuple[str, nn.Parameter]]) -> tuple[int, int, list[str]]:
    """(parameters with a non-zero finite gradient, trainable parameters, names with non-finite gradients)."""
    reached, total, bad = 0, 0, []
    for name, p in params:
        if not p.requires_grad:
            continue
        total += 1
        if p.grad is None:
            continue
        if not torch.isfinite(p.grad).all():
            bad.append(name)
        elif p.grad.abs().sum() > 0:
            reached += 1
    return reached, total, bad


# --------------------------------------------------------------------------------------- backbones


def check_backbone(
    factory_or_name: str | Callable,
    *,
    shapes: Sequence[tuple[int, int, int]] = ((1, 28, 28), (3, 84, 84)),
    options: dict[str, Any] | None = None,
    batch: int = 2,
    device: str | torch.device = "cpu",
) -> dict[tuple[int, int, int], int]:
    """Build the backbone for each ``(C, H, W)`` in ``shapes`` and check the contract.

    Checks: it is an ``nn.Module`` with a positive integer ``out_features``; a float
    batch ``(batch, C, H, W)`` maps to ``(batch, out_features)`` finite floats in train
    and eval mode; a backward pass reaches its parameters with finite gradients.
    Returns ``{shape: out_features}``.
    """
    factory, label, declared = _resolve_with_options("backbones", factory_or_name)
    options = declared if options is None else options
    found = {}
    for shape in shapes:
        c, h, w = shape
        _require(h == w, label, f"shapes must be square (C, H, W) tuples, got {shape}")
        where = f"{label} at input {tuple(shape)}"
        net = _build(factory, label, options, channels=c, image_size=h)
        _require(isinstance(net, nn.Module), where, f"factory must return an nn.Module, got {type(net).__name__}")
        d = getattr(net, "out_features", None)
        _require(
            isinstance(d, int) and not isinstance(d, bool) and d > 0,
            where,
            f"needs an integer attribute out_features > 0 (the feature size D), got {d!r}",
        )
        net = net.to(device).train()
        x = torch.rand(batch, c, h, w, device=device)
        y = net(x)
        _require(isinstance(y, torch.Tensor), where, f"forward must return a tensor, got {type(y).__name__}")
        _require(
            tuple(y.shape) == (batch, d),
            where,
            f"forward of {tuple(x.shape)} returned shape {tuple(y.shape)}, expected ({batch}, out_features={d})",
        )
        _require(y.is_floating_point(), where, f"features must be floating point, got {y.dtype}")
        _require(y.device == x.device, where, f"features on {y.device}, input on {x.device}")
        _require(bool(torch.isfinite(y).all()), where, "forward produced NaN or infinite features")
        y.float().pow(2).mean().backward()
        reached, total, bad = _grad_report(net.named_parameters())
        _require(total > 0, where, "has no trainable parameters (a backbone must be learnable)")
        _require(not bad, where, f"non-finite gradients in {', '.join(bad[:5])}")
        _require(reached > 0, where, f"backward reached none of its {total} trainable parameters")
        net.eval()
        with torch.no_grad():
            y_eval = net(x)
        _require(
            tuple(y_eval.shape) == (batch, d),
            where,
            f"eval-mode forward returned shape {tuple(y_eval.shape)}, expected ({batch}, {d})",
        )
        _require(bool(torch.isfinite(y_eval).all()), where, "eval-mode forward produced NaN or infinite features")
        found[tuple(shape)] = d
    return found


# --------------------------------------------------------------------------------------- datasets


def check_dataset(
    factory_or_name_or_dataset: Any,
    *,
    options: dict[str, Any] | None = None,
    classes: dict[str, int] | None = None,
    min_samples_per_class: int = 1,
    samples: int = 4,
) -> Any:
    """Build the dataset (or take a built :class:`metareg.FewShotDataset`) and check the contract.

    Checks: three splits with globally unique, pairwise disjoint class names; labels a
    1-D long tensor in ``[0, len(classes))`` known without loading any image (the image
    store is not touched until samples are drawn); every class has at least
    ``min_samples_per_class`` samples; ``channels`` in (1, 3) and a positive
    ``image_size``; gathering index tensors of any shape returns ``uint8`` images of
    ``index.shape + (C, H, W)``. ``classes`` optionally gives the expected number of
    classes per split, e.g. ``{"train": 64, "validation": 16, "test": 20}``.
    Returns the dataset.
    """
    from metareg.splits import SPLITS, ClassSplit, FewShotDataset, ImageStore

    if isinstance(factory_or_name_or_dataset, FewShotDataset):
        ds, label = factory_or_name_or_dataset, f"dataset {factory_or_name_or_dataset.name!r}"
    else:
        factory, label, declared = _resolve_with_options("datasets", factory_or_name_or_dataset)
        options = declared if options is None else options
        ds = _build(factory, label, options)
        _require(
            isinstance(ds, FewShotDataset),
            label,
            f"factory must return a metareg.FewShotDataset, got {type(ds).__name__}",
        )
    gathered = [0]
    _require(ds.channels in (1, 3), label, f"channels must be 1 or 3, got {ds.channels!r}")
    _require(isinstance(ds.image_size, int) and ds.image_size > 0, label, f"bad image_size {ds.image_size!r}")

    # Count image loads while the label-only checks run: they must not touch images.
    patched = []
    for split in SPLITS:
        store = ds.split(split).images
        if any(store is other for other in patched):
            continue

        def counting(index, _orig=store.gather):
            gathered[0] += 1
            return _orig(index)

        store.gather = counting
        patched.append(store)
    try:
        owner: dict[str, str] = {}
        for split in SPLITS:
            part = ds.split(split)
            where = f"{label}, {split} split"
            _require(isinstance(part, ClassSplit), where, f"must be a metareg.ClassSplit, got {type(part).__name__}")
            _require(isinstance(part.images, ImageStore), where, "images must be a metareg.ImageStore")
            names = list(part.classes)
            _require(len(names) >= 2, where, f"has {len(names)} classes; episodes need at least 2")
            _require(len(set(names)) == len(names), where, "class names repeat within the split")
            for n in names:
                _require(isinstance(n, str), where, f"class names must be strings, got {n!r}")
                _require(n not in owner, label, f"class {n!r} is in both the {owner.get(n)} and {split} splits")
                owner[n] = split
            y = part.labels
            _require(
                isinstance(y, torch.Tensor) and y.dtype == torch.long and y.dim() == 1,
                where,
                f"labels must be a 1-D long tensor, got {getattr(y, 'dtype', type(y))} "
                f"{tuple(getattr(y, 'shape', ()))}",
            )
            _require(len(y) == len(part.images), where, f"{len(y)} labels for {len(part.images)} images")
            _require(bool(((y >= 0) & (y < len(names))).all()), where, f"labels outside [0, {len(names)})")
            counts = torch.bincount(y, minlength=len(names))
            low = int(counts.argmin())
            _require(
                int(counts[low]) >= min_samples_per_class,
                where,
                f"class {names[low]!r} has {int(counts[low])} samples, fewer than {min_samples_per_class}",
            )
            if classes and split in classes:
                _require(
                    len(names) == classes[split],
                    where,
                    f"has {len(names)} classes, expected {classes[split]}",
                )
        _require(gathered[0] == 0, label, "reading labels and classes loaded images (labels must not need images)")
    finally:
        for store in patched:
            del store.gather

    g = torch.Generator().manual_seed(0)
    shape = (ds.channels, ds.image_size, ds.image_size)
    for split in SPLITS:
        part = ds.split(split)
        where = f"{label}, {split} split"
        picks = [0, len(part) - 1, *torch.randint(len(part), (max(samples - 2, 0),), generator=g).tolist()]
        index = torch.tensor(picks[: max(samples, 2) // 2 * 2], dtype=torch.long)
        for idx in (index, index.view(2, -1)):
            try:
                images = part.images.gather(idx)
            except Exception as exc:  # noqa: BLE001 - report which samples failed to load
                raise AssertionError(
                    f"{where}: loading samples {idx.tolist()} failed: {type(exc).__name__}: {exc}"
                ) from exc
            expected = (*idx.shape, *shape)
            _require(
                isinstance(images, torch.Tensor) and tuple(images.shape) == expected,
                where,
                f"gather of index shape {tuple(idx.shape)} returned {tuple(getattr(images, 'shape', ()))}, "
                f"expected {expected}",
            )
            _require(images.dtype == torch.uint8, where, f"images must be uint8, got {images.dtype}")
    return ds


# --------------------------------------------------------------------------------------- transforms


def check_transform(
    factory_or_name: str | Callable,
    *,
    channels: int = 3,
    image_size: int = 32,
    options: dict[str, Any] | None = None,
    batch: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Any:
    """Build the transform for ``(channels, image_size)`` and check the contract.

    Checks: it is a :class:`metareg.Transform`; ``forward`` and ``evaluate`` of a
    ``(batch, C, H, W)`` float batch in ``[0, 1]`` return finite float32 batches of
    ``batch`` images with ``C`` channels, on the input's device, with the same shape
    from both and on every call; the same torch seed gives the same output.
    Returns the transform.
    """
    import metareg

    factory, label, declared = _resolve_with_options("transforms", factory_or_name)
    options = declared if options is None else options
    t = _build(factory, label, options, channels=channels, image_size=image_size)
    _require(
        isinstance(t, metareg.Transform), label, f"factory must return a metareg.Transform, got {type(t).__name__}"
    )
    t = t.to(device)
    torch.manual_seed(seed + 1)
    x = torch.rand(batch, channels, image_size, image_size, device=device)
    shapes = {}
    for mode in ("forward", "evaluate"):
        fn = t if mode == "forward" else t.evaluate
        t.train(mode == "forward")
        outs = []
        for i in range(2):
            torch.manual_seed(seed + i)
            with torch.no_grad():
                y = fn(x.clone())
            where = f"{label}.{mode}"
            _require(isinstance(y, torch.Tensor), where, f"must return a tensor, got {type(y).__name__}")
            _require(y.dim() == 4, where, f"must return (N, C, H, W), got shape {tuple(y.shape)}")
            _require(
                y.shape[0] == batch and y.shape[1] == channels,
                where,
                f"changed the batch or channel count: {tuple(x.shape)} -> {tuple(y.shape)}",
            )
            _require(y.dtype == x.dtype, where, f"changed the dtype: {x.dtype} -> {y.dtype}")
            _require(y.device == x.device, where, f"moved the batch from {x.device} to {y.device}")
            _require(bool(torch.isfinite(y).all()), where, "produced NaN or infinite values")
            outs.append(y)
        _require(
            outs[0].shape == outs[1].shape,
            label,
            f"{mode} returned different shapes on two calls: {tuple(outs[0].shape)} and {tuple(outs[1].shape)}",
        )
        shapes[mode] = tuple(outs[0].shape)
        torch.manual_seed(seed)
        with torch.no_grad():
            again = fn(x.clone())
        _require(
            torch.equal(again, outs[0]),
            label,
            f"{mode} is not reproducible: the same torch seed gave different outputs "
            "(draw randomness from torch's generator, not Python's random or numpy)",
        )
    _require(
        shapes["forward"] == shapes["evaluate"],
        label,
        f"training output {shapes['forward']} and evaluation output {shapes['evaluate']} differ in shape; "
        "the backbone sees both",
    )
    t.train()
    return t


# --------------------------------------------------------------------------------------- strategies


class _TinyBackbone(nn.Module):
    def __init__(self, channels: int, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.out_features = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x)))).flatten(1)


def tiny_backbone(channels: int = 1, width: int = 8) -> nn.Module:
    """A one-layer conv backbone (``out_features = 4 * width``) for fast strategy checks."""
    return _TinyBackbone(channels, width)


def make_episodes(
    *,
    meta_batch: int = 2,
    ways: int = 3,
    shots: int | Sequence[int] = 2,
    queries: int = 2,
    channels: int = 1,
    image_size: int = 8,
    labelled: bool = True,
    seed: int = 0,
) -> Any:
    """A random :class:`metareg.EpisodeBatch` with class-major labels.

    ``shots`` may be a list with one support count per class (uneven support sets, as
    prediction builds them).
    """
    from metareg.episodes import EpisodeBatch

    per_class = [shots] * ways if isinstance(shots, int) else list(shots)
    if len(per_class) != ways:
        raise ValueError(f"shots has {len(per_class)} counts for {ways} ways")
    g = torch.Generator().manual_seed(seed)
    support_labels = torch.repeat_interleave(torch.arange(ways), torch.tensor(per_class))
    query_labels = torch.arange(ways).repeat_interleave(queries)
    # Class-dependent brightness so that the task is learnable, plus noise.
    def images(lab):
        base = (lab.float() + 1) / (ways + 1)
        noise = torch.rand(meta_batch, len(lab), channels, image_size, image_size, generator=g) * 0.3
        return (base.view(1, -1, 1, 1, 1) * 0.7 + noise).clamp(0, 1)

    return EpisodeBatch(
        support=images(support_labels),
        support_labels=support_labels.expand(meta_batch, -1).clone(),
        query=images(query_labels),
        query_labels=query_labels.expand(meta_batch, -1).clone() if labelled else None,
        ways=ways,
    )


def check_strategy(
    factory_or_name: str | Callable,
    *,
    options: dict[str, Any] | None = None,
    backbone: nn.Module | None = None,
    ways: int = 3,
    shots: int = 2,
    queries: int = 2,
    meta_batch: int = 2,
    channels: int = 1,
    image_size: int = 8,
    num_train_classes: int = 6,
) -> Any:
    """Build the strategy, set it up on a tiny backbone and check the contract.

    Checks: it is a :class:`metareg.Strategy`; a training step (``loss`` on an
    episode batch, or ``labelled_loss`` for ``train_batches = "labelled"``) returns a
    finite scalar loss with logits ``(B, Q, ways)`` and matching labels, and its
    gradients reach the backbone's parameters; evaluation (eval mode, autograd only if
    ``needs_grad_at_eval``) returns finite logits ``(B, Q, ways)``, also for support
    sets with uneven counts per class and no query labels.
    Returns the strategy.
    """
    import metareg

    factory, label, declared = _resolve_with_options("strategies", factory_or_name)
    options = declared if options is None else options
    strategy = _build(factory, label, options)
    _require(
        isinstance(strategy, metareg.Strategy),
        label,
        f"factory must return a metareg.Strategy, got {type(strategy).__name__}",
    )
    net = backbone if backbone is not None else tiny_backbone(channels)
    task = metareg.TaskInfo(
        ways=ways,
        shots=shots,
        queries=queries,
        test_ways=ways,
        test_shots=shots,
        test_queries=queries,
        num_train_classes=num_train_classes,
        channels=channels,
        image_size=image_size,
        feature_dim=net.out_features,
    )
    strategy.setup(net, task)
    strategy.train()
    torch.manual_seed(0)
    episodes = make_episodes(
        meta_batch=meta_batch, ways=ways, shots=shots, queries=queries, channels=channels, image_size=image_size
    )
    q = ways * queries
    if strategy.train_batches == "labelled":
        n = num_train_classes * 2
        images = torch.rand(n, channels, image_size, image_size)
        labels = torch.arange(num_train_classes).repeat(2)
        where = f"{label}.labelled_loss"
        out = _call(where, "a labelled training batch", strategy.labelled_loss, images, labels)
    else:
        _require(
            strategy.train_batches == "episodes",
            label,
            f"train_batches must be 'episodes' or 'labelled', got {strategy.train_batches!r}",
        )
        where = f"{label}.loss"
        out = _call(label, "loss on a training episode batch", strategy.loss, episodes)
    _require(isinstance(out, metareg.StepOutput), where, f"must return a metareg.StepOutput, got {type(out).__name__}")
    loss, logits, labels = out
    _require(isinstance(loss, torch.Tensor) and loss.dim() == 0, where, f"loss must be a scalar tensor, got {loss!r}")
    _require(bool(torch.isfinite(loss)), where, f"loss is not finite: {loss.item()}")
    _require(loss.requires_grad, where, "loss does not require grad: nothing would be trained")
    _require(
        tuple(logits.shape[:-1]) == tuple(labels.shape),
        where,
        f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}",
    )
    if strategy.train_batches == "episodes":
        _require(
            tuple(logits.shape) == (meta_batch, q, ways),
            where,
            f"logits have shape {tuple(logits.shape)}, expected (B, Q, ways) = ({meta_batch}, {q}, {ways})",
        )
    loss.backward()
    reached, total, bad = _grad_report(net.named_parameters())
    _require(not bad, where, f"non-finite gradients in backbone parameters {', '.join(bad[:5])}")
    _require(reached > 0, where, f"gradients reached none of the backbone's {total} trainable parameters")
    strategy.zero_grad(set_to_none=True)

    strategy.eval()
    grad = bool(getattr(strategy, "needs_grad_at_eval", False))
    cases = [
        ("an evaluation episode batch", make_episodes(
            meta_batch=meta_batch, ways=ways, shots=shots, queries=queries, channels=channels,
            image_size=image_size, seed=1)),
        ("a prediction batch with uneven support counts and no query labels", make_episodes(
            meta_batch=meta_batch, ways=ways, shots=[1] + [2] * (ways - 1), queries=queries,
            channels=channels, image_size=image_size, labelled=False, seed=2)),
    ]
    for what, batch in cases:
        with torch.set_grad_enabled(grad):
            logits = _call(label, f"forward on {what}", strategy, batch)
        expected = (batch.query.shape[0], batch.query.shape[1], batch.ways)
        _require(
            isinstance(logits, torch.Tensor) and tuple(logits.shape) == expected,
            label,
            f"forward on {what} returned {tuple(getattr(logits, 'shape', ()))}, expected (B, Q, ways) = {expected}",
        )
        _require(bool(torch.isfinite(logits).all()), label, f"forward on {what} returned NaN or infinite logits")
    strategy.zero_grad(set_to_none=True)
    strategy.train()
    return strategy


def check_component(kind: str, factory_or_name: str | Callable, **kwargs: Any) -> Any:
    """Dispatch to the check for ``kind`` (backbones, datasets, strategies, transforms)."""
    from metareg.registry import normalise_kind

    checks = {
        "backbones": check_backbone,
        "datasets": check_dataset,
        "strategies": check_strategy,
        "transforms": check_transform,
    }
    return checks[normalise_kind(kind)](factory_or_name, **kwargs)


# --------------------------------------------------------------------------------------- combinations


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

