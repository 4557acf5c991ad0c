"""The transform contract check."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from metareg import kinds
from metareg.testing.harness import build, require, resolve_with_options


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

    factory, label, declared = resolve_with_options(kinds.TRANSFORM.plural, factory_or_name)
    options = declared if options is None else options
    t = build(factory, label, options, kinds.TRANSFORM, channels=channels, image_size=image_size)
    require(
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
            require(isinstance(y, torch.Tensor), where, f"must return a tensor, got {type(y).__name__}")
            require(y.dim() == 4, where, f"must return (N, C, H, W), got shape {tuple(y.shape)}")
            require(
                y.shape[0] == batch and y.shape[1] == channels,
                where,
                f"changed the batch or channel count: {tuple(x.shape)} -> {tuple(y.shape)}",
            )
            require(y.dtype == x.dtype, where, f"changed the dtype: {x.dtype} -> {y.dtype}")
            require(y.device == x.device, where, f"moved the batch from {x.device} to {y.device}")
            require(bool(torch.isfinite(y).all()), where, "produced NaN or infinite values")
            outs.append(y)
        require(
            outs[0].shape == outs[1].shape,
            label,
            f"{mode} returned different shapes on two calls: {tuple(outs[0].shape)} and {tuple(outs[1].shape)}",
        )
        shapes[mode] = tuple(outs[0].shape)
        torch.manual_seed(seed)
        with torch.no_grad():
            again = fn(x.clone())
        require(
            torch.equal(again, outs[0]),
            label,
            f"{mode} is not reproducible: the same torch seed gave different outputs "
            "(draw randomness from torch's generator, not Python's random or numpy)",
        )
    require(
        shapes["forward"] == shapes["evaluate"],
        label,
        f"training output {shapes['forward']} and evaluation output {shapes['evaluate']} differ in shape; "
        "the backbone sees both",
    )
    t.train()
    return t
