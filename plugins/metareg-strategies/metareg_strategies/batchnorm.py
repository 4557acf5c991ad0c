"""Batch normalisation with batch statistics, written with plain tensor operations.

MAML normalises with each batch's statistics (support batch in the inner loop, query batch
after it). ``torch.func.replace_all_batch_norm_modules_`` gets the first derivative right,
but under ``vmap(grad(...))`` the second derivative through ``F.batch_norm`` is wrong (for
example a non-zero meta-gradient for a conv bias that feeds batch norm, which cannot affect
the output; ``tests/test_maml_gradcheck.py`` checks against a plain autograd loop). The same
normalisation spelt as mean/var/rsqrt differentiates exactly to any order.
"""
from __future__ import annotations

import torch
from torch import nn


class BatchStatisticsNorm(nn.Module):
    """Stand-in for a ``BatchNorm{1,2,3}d`` module that always uses the batch's own statistics
    and keeps no running statistics. Shares the replaced module's affine parameters, so
    parameter names (and checkpoints' parameter keys) stay the same."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.num_features, self.eps = norm.num_features, norm.eps
        self.weight = norm.weight if norm.affine else None
        self.bias = norm.bias if norm.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(dims, keepdim=True)
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, batch statistics"


def use_batch_statistics(module: nn.Module) -> int:
    """Replace every batch-norm layer inside ``module`` (in place); returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, BatchStatisticsNorm(child))
                count += 1
    return count
