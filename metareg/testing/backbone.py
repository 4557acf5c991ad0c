"""The backbone contract check."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from metareg import kinds
from metareg.testing.harness import build, grad_report, require, resolve_with_options


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
    factory, label, declared = resolve_with_options(kinds.BACKBONE.plural, factory_or_name)
    options = declared if options is None else options
    found = {}
    for shape in shapes:
        c, h, w = shape
        require(h == w, label, f"shapes must be square (C, H, W) tuples, got {shape}")
        where = f"{label} at input {tuple(shape)}"
        net = build(factory, label, options, kinds.BACKBONE, channels=c, image_size=h)
        require(isinstance(net, nn.Module), where, f"factory must return an nn.Module, got {type(net).__name__}")
        d = getattr(net, "out_features", None)
        require(
            isinstance(d, int) and not isinstance(d, bool) and d > 0,
            where,
            f"needs an integer attribute out_features > 0 (the feature size D), got {d!r}",
        )
        net = net.to(device).train()
        x = torch.rand(batch, c, h, w, device=device)
        y = net(x)
        require(isinstance(y, torch.Tensor), where, f"forward must return a tensor, got {type(y).__name__}")
        require(
            tuple(y.shape) == (batch, d),
            where,
            f"forward of {tuple(x.shape)} returned shape {tuple(y.shape)}, expected ({batch}, out_features={d})",
        )
        require(y.is_floating_point(), where, f"features must be floating point, got {y.dtype}")
        require(y.device == x.device, where, f"features on {y.device}, input on {x.device}")
        require(bool(torch.isfinite(y).all()), where, "forward produced NaN or infinite features")
        y.float().pow(2).mean().backward()
        reached, total, bad = grad_report(net.named_parameters())
        require(total > 0, where, "has no trainable parameters (a backbone must be learnable)")
        require(not bad, where, f"non-finite gradients in {', '.join(bad[:5])}")
        require(reached > 0, where, f"backward reached none of its {total} trainable parameters")
        net.eval()
        with torch.no_grad():
            y_eval = net(x)
        require(
            tuple(y_eval.shape) == (batch, d),
            where,
            f"eval-mode forward returned shape {tuple(y_eval.shape)}, expected ({batch}, {d})",
        )
        require(bool(torch.isfinite(y_eval).all()), where, "eval-mode forward produced NaN or infinite features")
        found[tuple(shape)] = d
    return found
