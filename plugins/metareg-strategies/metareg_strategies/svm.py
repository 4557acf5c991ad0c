"""A batched, differentiable multi-class (Crammer-Singer) SVM dual solver for MetaOptNet.

The dual, in MetaOptNet's notation (liblinear's): variables ``alpha (n, ways)`` per episode,

    minimise   1/2 sum_m alpha[:, m]^T K alpha[:, m] + ridge/2 ||alpha||^2 - <Y, alpha>
    subject to alpha[i, m] <= C * Y[i, m]   and   sum_m alpha[i, m] = 0   for every support sample i

with ``K`` the support Gram matrix, ``Y`` the one-hot support labels and ``ridge = 1`` the
identity MetaOptNet adds to keep the problem strictly convex. Class ``m``'s weight vector is
``sum_i alpha[i, m] x_i``, so query scores are ``K_query_support @ alpha``.

Solving, for a whole meta-batch at once and without qpth (which pins numpy < 2):

1. accelerated projected gradient (FISTA with the strongly-convex momentum) from ``alpha = 0``;
   each row's feasible set is a shifted simplex, so the projection is a sort and a cumsum;
2. ``polish_steps`` primal-dual active-set corrections: fix the coordinates at their bound
   whose multiplier is positive, solve the equality-constrained KKT system on the rest;
3. one last KKT solve on the final active set, *with* autograd: on a fixed active set the
   solution is a smooth function of ``K`` (and of the features), so its gradient is the exact
   implicit gradient of the QP, as qpth's would be.

The KKT system has ``n * ways + n`` unknowns per episode (150 for 5-way 5-shot) and is solved
in float64. For very large episodes ``exact=False`` skips steps 2-3 and differentiates through
the unrolled iterations instead.

Padded batches of variable episodes (``pinned``): a coordinate of a padded support slot or of a
padded way is held at 0 throughout (its bound is 0, and a padded way has no support, so left free
it could go negative and change the real solution). The projection leaves pinned coordinates out
of each row's simplex, the KKT solves keep them fixed and give a padded row's multiplier the
equation ``nu = 0``, so every episode's solution is the one it has alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Stands for minus infinity in a projection: far below any real coordinate, finite so that sums and
# gradients stay finite.
_OUT = 1e30


def project_rows(v: torch.Tensor, upper: torch.Tensor, total, pinned: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto ``{a : a <= upper, sum(a) = 0}``.

    With ``z = upper - a`` the set is the simplex ``{z >= 0, sum(z) = total}`` where
    ``total = sum(upper)`` (a number, or one per row), so this is a simplex projection.
    Coordinates in ``pinned`` stay at ``upper`` and are left out of their row's simplex.
    """
    z = upper - v
    if pinned is not None:
        z = z.masked_fill(pinned, -_OUT)  # sorted last, never above the threshold: z = 0, a = upper
    s, _ = torch.sort(z, dim=-1, descending=True)
    cumulative = s.cumsum(-1) - total
    index = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    support = (s - cumulative / index) > 0
    rho = support.to(z.dtype).mul(index).argmax(-1, keepdim=True)  # last index where the condition holds
    theta = cumulative.gather(-1, rho) / (rho + 1).to(z.dtype)
    projected = upper - (z - theta).clamp(min=0)
    # Exactly at the bound: a row with every coordinate pinned (padding) has a meaningless threshold.
    return projected if pinned is None else torch.where(pinned, upper, projected)


def _gradient(alpha, gram, targets, ridge):
    return gram @ alpha + ridge * alpha - targets


def _fista(gram, targets, upper, total, ridge, iterations, pinned=None):
    b, n, k = targets.shape
    with torch.no_grad():
        lipschitz = torch.linalg.eigvalsh(gram.detach().double())[:, -1].clamp(min=0).to(gram.dtype) + ridge
    step = (1.0 / lipschitz).view(b, 1, 1)
    root = (lipschitz / ridge).sqrt()
    momentum = ((root - 1) / (root + 1)).view(b, 1, 1)
    alpha = torch.zeros_like(targets)
    ahead = alpha
    for _ in range(iterations):
        new = project_rows(ahead - step * _gradient(ahead, gram, targets, ridge), upper, total, pinned)
        ahead = new + momentum * (new - alpha)
        alpha = new
    return alpha


def _kkt_solve(gram, targets, upper, fixed, ridge):
    """Solve the QP's KKT system with the coordinates in ``fixed`` held at ``upper``.

    Returns ``alpha (B, n, k)`` and the row multipliers ``nu (B, n)``."""
    b, n, k = targets.shape
    nk = n * k
    dtype, device = gram.dtype, gram.device
    eye_k = torch.eye(k, dtype=dtype, device=device)
    hessian = torch.kron(gram, eye_k) + ridge * torch.eye(nk, dtype=dtype, device=device)  # (B, nk, nk)
    rows = torch.kron(torch.eye(n, dtype=dtype, device=device), torch.ones(1, k, dtype=dtype, device=device))
    rows = rows.expand(b, n, nk)  # sum_m alpha[i, m]
    free = (~fixed).reshape(b, nk, 1)
    top = torch.cat([hessian, rows.transpose(1, 2)], 2)
    pin = torch.cat([torch.eye(nk, dtype=dtype, device=device).expand(b, nk, nk),
                     torch.zeros(b, nk, n, dtype=dtype, device=device)], 2)
    top = torch.where(free, top, pin)
    bottom = torch.cat([rows, torch.zeros(b, n, n, dtype=dtype, device=device)], 2)
    dead = fixed.all(-1)  # (B, n): padded support rows, every coordinate held; their multiplier is 0
    if bool(dead.any()):
        identity = torch.cat([torch.zeros(n, nk, dtype=dtype, device=device),
                              torch.eye(n, dtype=dtype, device=device)], 1).expand(b, n, nk + n)
        bottom = torch.where(dead.unsqueeze(-1), identity, bottom)
    rhs_top = torch.where(free.squeeze(-1), targets.reshape(b, nk), upper.reshape(b, nk))
    rhs = torch.cat([rhs_top, torch.zeros(b, n, dtype=dtype, device=device)], 1)
    solution = torch.linalg.solve(torch.cat([top, bottom], 1), rhs)
    return solution[:, :nk].reshape(b, n, k), solution[:, nk:]


def _active_set(alpha, gram, targets, upper, nu, ridge, scale, pinned=None):
    """Primal-dual active-set rule: fix a coordinate when its bound multiplier would be positive."""
    # Stationarity: K alpha + ridge alpha - Y + nu + multiplier = 0, for the constraint alpha <= upper.
    multiplier = -_gradient(alpha, gram, targets, ridge) - nu.unsqueeze(-1)
    fixed = (multiplier + scale * (alpha - upper)) > 0
    real_row = torch.ones_like(fixed[..., :1])
    if pinned is not None:
        fixed = fixed | pinned
        multiplier = multiplier.masked_fill(pinned, float("inf"))  # a pinned coordinate is never freed
        real_row = ~pinned.all(-1, keepdim=True)
    # Every row needs one free coordinate (its entries must sum to zero while the bounds sum to C):
    # never fix a whole row; free the coordinate with the smallest multiplier instead.
    full = fixed.all(-1, keepdim=True)
    weakest = F.one_hot(multiplier.argmin(-1), fixed.shape[-1]).bool()
    return fixed & ~(full & weakest & real_row)


def crammer_singer_svm(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    ways: int,
    *,
    c: float = 0.1,
    iterations: int = 50,
    polish_steps: int = 10,
    exact: bool = True,
    ridge: float = 1.0,
    return_alpha: bool = False,
    support_mask: torch.Tensor | None = None,
    way_mask: torch.Tensor | None = None,
):
    """Query scores ``(B, Q, ways)`` of a Crammer-Singer SVM fitted on each episode's support set.

    support ``(B, S, D)``, support_labels ``(B, S)`` in ``[0, ways)``, query ``(B, Q, D)``.
    Uneven class counts are fine. Differentiable with respect to the features.
    A padded batch gives ``support_mask (B, S)`` and ``way_mask (B, ways)`` (True where real).
    """
    pinned, total = None, c
    if support_mask is None:
        targets = F.one_hot(support_labels, ways).to(support.dtype)
    else:
        real = support_mask.unsqueeze(-1)
        targets = F.one_hot(support_labels.clamp(min=0), ways).to(support.dtype) * real.to(support.dtype)
        pinned = ~(real & way_mask.unsqueeze(1))
        total = c * real.to(support.dtype)  # a padded row's bounds sum to 0, so its entries are all 0
    gram = support @ support.transpose(1, 2)
    upper = c * targets
    if not exact:
        alpha = _fista(gram, targets, upper, total, ridge, iterations, pinned)
    else:
        g64, t64, u64 = gram.double(), targets.double(), upper.double()
        total64 = total if pinned is None else total.double()
        with torch.no_grad():
            alpha0 = _fista(g64.detach(), t64, u64, total64, ridge, iterations, pinned)
            fixed = (u64 - alpha0) <= 1e-9 + 1e-6 * c
            if pinned is not None:
                fixed = fixed | pinned
            for _ in range(polish_steps):
                alpha0, nu = _kkt_solve(g64.detach(), t64, u64, fixed, ridge)
                new = _active_set(alpha0, g64.detach(), t64, u64, nu, ridge, scale=1.0, pinned=pinned)
                if torch.equal(new, fixed):
                    break
                fixed = new
        alpha, _ = _kkt_solve(g64, t64, u64, fixed, ridge)
        alpha = alpha.to(support.dtype)
    scores = (query @ support.transpose(1, 2)) @ alpha
    return (scores, alpha) if return_alpha else scores
