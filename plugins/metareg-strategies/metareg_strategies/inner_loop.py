"""Batched inner-loop adaptation with ``torch.func``, shared by MAML and ANIL.

One call adapts a whole meta-batch: ``vmap`` over the episode axis of a function
that takes ``adaptation_steps`` gradient steps (``torch.func.grad``) from the
shared meta-parameters and returns the adapted model's query logits. The
meta-parameters enter ``vmap`` unbatched (``in_dims=None``); after the first step
the fast weights are per-episode (batched) tensors. There are no module clones and
no Python loop over episodes.

Second order is automatic: the inner gradients are ordinary differentiable
functions of the meta-parameters, so differentiating the query loss outside
``vmap`` goes through them. First order detaches the inner gradients.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

ModelFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


# Left to eager under `metareg run --compile`: dynamo cannot trace the batch-norm function's own vmap rule
# ("You tried to vmap over ApplyTemplate, but it does not have vmap support", torch 2.14), so the step
# compiles around the inner loop instead of failing.
@torch.compiler.disable
def adapted_query_logits(
    model: ModelFn,
    params: dict[str, torch.Tensor],
    lrs: dict[str, torch.Tensor | float],
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    *,
    steps: int,
    first_order: bool,
) -> torch.Tensor:
    """Adapt ``params`` on each episode's support set and classify its query set.

    model: ``model(params, x (N, ...)) -> logits (N, ways)``, a pure function of ``params``.
    lrs: inner learning rate per parameter name (a float, or a tensor broadcastable to it).
    support ``(B, S, ...)``, support_labels ``(B, S)``, query ``(B, Q, ...)`` -> ``(B, Q, ways)``.
    """

    def support_loss(p, xs, ys):
        return F.cross_entropy(model(p, xs), ys)

    def episode(p, lr, xs, ys, xq):
        fast = p
        for _ in range(steps):
            g = grad(support_loss)(fast, xs, ys)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lr[k] * g[k] for k in fast}
        return model(fast, xq)

    # Dropout and other random layers draw independently per episode.
    batched = vmap(episode, in_dims=(None, None, 0, 0, 0), randomness="different")
    return batched(params, lrs, support, support_labels, query)


def full_precision(device: torch.device):
    """Turn autocast off: ``vmap(grad(...))`` under autocast fails in backward
    ("Expected grad_output to have type BFloat16 but got Float"), so the inner loop
    runs with autocast off whatever precision the trainer asked for."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def as_full(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 (or integer) tensors -> float32; float32 and float64 pass unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast would compute in on ``device`` right now, or None when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)
