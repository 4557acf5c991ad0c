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
    support_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    way_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adapt ``params`` on each episode's support set and classify its query set.

    model: ``model(params, x (N, ...)) -> logits (N, ways)``, a pure function of ``params``.
    lrs: inner learning rate per parameter name (a float, or a tensor broadcastable to it).
    support ``(B, S, ...)``, support_labels ``(B, S)``, query ``(B, Q, ...)`` -> ``(B, Q, ways)``.

    A padded batch of variable episodes gives ``support_mask (B, S)``, ``query_mask (B, Q)`` and
    ``way_mask (B, ways)``: the model is then called ``model(params, x, mask)`` with the episode's
    real-sample mask (for batch statistics), padded ways' logits are ``-inf`` and the inner loss is
    the mean over real support samples, so each episode adapts exactly as it would alone.
    """
    if support_mask is not None:
        return _masked_adaptation(model, params, lrs, support, support_labels, query, support_mask, query_mask,
                                  way_mask, steps=steps, first_order=first_order)

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


def _masked_adaptation(model, params, lrs, support, support_labels, query, support_mask, query_mask, way_mask, *,
                       steps: int, first_order: bool) -> torch.Tensor:
    def logits_of(p, x, mask, ways):
        return model(p, x, mask).masked_fill(~ways, float("-inf"))

    def support_loss(p, xs, ys, ms, mw):
        logp = torch.log_softmax(logits_of(p, xs, ms, mw), -1)
        nll = -logp.gather(-1, ys.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        # where(), not a product: a padded slot's value must not reach the sum even as 0 * inf.
        return torch.where(ms, nll, torch.zeros_like(nll)).sum() / ms.sum()

    def episode(p, lr, xs, ys, xq, ms, mq, mw):
        fast = p
        for _ in range(steps):
            g = grad(support_loss)(fast, xs, ys, ms, mw)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lr[k] * g[k] for k in fast}
        return logits_of(fast, xq, mq, mw)

    batched = vmap(episode, in_dims=(None, None, 0, 0, 0, 0, 0, 0), randomness="different")
    return batched(params, lrs, support, support_labels, query, support_mask, query_mask, way_mask)


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
