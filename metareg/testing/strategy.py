"""The strategy contract check."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from metareg import kinds
from metareg.testing.harness import build, call, grad_report, require, resolve_with_options
from metareg.testing.synthetic import make_episodes, tiny_backbone


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

    factory, label, declared = resolve_with_options(kinds.STRATEGY.plural, factory_or_name)
    options = declared if options is None else options
    strategy = build(factory, label, options, kinds.STRATEGY)
    require(
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
        out = call(where, "a labelled training batch", strategy.labelled_loss, images, labels)
    else:
        require(
            strategy.train_batches == "episodes",
            label,
            f"train_batches must be 'episodes' or 'labelled', got {strategy.train_batches!r}",
        )
        where = f"{label}.loss"
        out = call(label, "loss on a training episode batch", strategy.loss, episodes)
    require(isinstance(out, metareg.StepOutput), where, f"must return a metareg.StepOutput, got {type(out).__name__}")
    loss, logits, labels = out
    require(isinstance(loss, torch.Tensor) and loss.dim() == 0, where, f"loss must be a scalar tensor, got {loss!r}")
    require(bool(torch.isfinite(loss)), where, f"loss is not finite: {loss.item()}")
    require(loss.requires_grad, where, "loss does not require grad: nothing would be trained")
    require(
        tuple(logits.shape[:-1]) == tuple(labels.shape),
        where,
        f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}",
    )
    if strategy.train_batches == "episodes":
        require(
            tuple(logits.shape) == (meta_batch, q, ways),
            where,
            f"logits have shape {tuple(logits.shape)}, expected (B, Q, ways) = ({meta_batch}, {q}, {ways})",
        )
    loss.backward()
    reached, total, bad = grad_report(net.named_parameters())
    require(not bad, where, f"non-finite gradients in backbone parameters {', '.join(bad[:5])}")
    require(reached > 0, where, f"gradients reached none of the backbone's {total} trainable parameters")
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
            logits = call(label, f"forward on {what}", strategy, batch)
        expected = (batch.query.shape[0], batch.query.shape[1], batch.ways)
        require(
            isinstance(logits, torch.Tensor) and tuple(logits.shape) == expected,
            label,
            f"forward on {what} returned {tuple(getattr(logits, 'shape', ()))}, expected (B, Q, ways) = {expected}",
        )
        require(bool(torch.isfinite(logits).all()), label, f"forward on {what} returned NaN or infinite logits")
    strategy.zero_grad(set_to_none=True)
    strategy.train()
    return strategy
