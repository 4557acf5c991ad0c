"""The outer optimiser of a run and its learning-rate schedule, built from a RunConfig.

Parameters are grouped by ``lr_multipliers`` (a glob over the strategy's parameter names, e.g.
``backbone.*``, to a factor of ``lr``); every schedule multiplies each group's own learning rate,
so a multiplier holds for the whole run. MetaOptNet's schedule (Lee et al. 2019: lr 0.1, then 0.006,
0.0012 and 0.00024 after epochs 20, 40 and 50) is
``scheduler=multistep, milestones=[20, 40, 50], milestone_factors=[0.06, 0.012, 0.0024]``.
"""
from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from metareg.config import RunConfig
from metareg.errors import ConfigError

# Each param group carries its factor of the base lr under this key (torch keeps unknown keys in
# param_groups and their saved state), so the logged lr is the schedule's, whatever the group.
MULTIPLIER = "lr_multiplier"


def param_groups(strategy: nn.Module, multipliers: dict[str, float], lr: float,
                 others: list[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """One group per pattern of ``multipliers`` (in order) holding the strategy parameters it matches
    first, then one at factor 1 for the rest and for ``others`` (parameters outside the strategy).

    A pattern that matches nothing left is refused, naming it and some parameter names: a misspelt
    pattern would otherwise train everything at the base lr without a word.
    """
    named = list(strategy.named_parameters())
    taken: dict[str, list[nn.Parameter]] = {pattern: [] for pattern in multipliers}
    rest: list[nn.Parameter] = []
    for name, param in named:
        pattern = next((p for p in multipliers if fnmatch.fnmatchcase(name, p)), None)
        (taken[pattern] if pattern is not None else rest).append(param)
    for pattern, params in taken.items():
        if not params:
            matched = [n for n, _ in named if fnmatch.fnmatchcase(n, pattern)]
            owner = next((p for p in multipliers if matched and fnmatch.fnmatchcase(matched[0], p)), None)
            why = (f"the parameters it matches are in the group of {owner!r}, listed before it (a parameter "
                   "joins the first pattern it matches)" if owner else "it matches no parameter of the strategy")
            raise ConfigError(f"lr_multipliers pattern {pattern!r}: {why}; parameter names look like "
                              f"{', '.join(_examples([n for n, _ in named]))}")
    groups = [{"params": params, "lr": lr * multipliers[pattern], MULTIPLIER: multipliers[pattern]}
              for pattern, params in taken.items()]
    rest += list(others)
    if rest:
        groups.append({"params": rest, "lr": lr, MULTIPLIER: 1.0})
    return groups


def _examples(names: list[str], count: int = 6) -> list[str]:
    """A few parameter names, one per top-level module first (``scale``, ``backbone.features.0.0.weight``)."""
    if not names:
        return ["(none: the strategy has no parameters)"]
    heads: dict[str, str] = {}
    for name in names:
        heads.setdefault(name.split(".")[0], name)
    picked = list(heads.values())[:count]
    picked += [n for n in names if n not in picked][:count - len(picked)]
    return picked + (["..."] if len(names) > len(picked) else [])


class MilestoneFactor:
    """``LambdaLR`` factor at an epoch: 1 before the first milestone, then ``factors[i]`` (or ``gamma**(i+1)``)
    once epoch ``milestones[i]`` is reached. A plain object, so its state is saved with the checkpoint."""

    def __init__(self, milestones: list[int], factors: list[float], gamma: float):
        self.milestones = list(milestones)
        self.factors = list(factors) or [gamma ** (i + 1) for i in range(len(milestones))]

    def __call__(self, epoch: int) -> float:
        passed = sum(1 for m in self.milestones if m <= epoch)
        return self.factors[passed - 1] if passed else 1.0


def make_optimizer(groups: list[dict[str, Any]], config: RunConfig) -> torch.optim.Optimizer:
    c = config
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                               nesterov=c.nesterov)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)


def configure(strategy: nn.Module, config: RunConfig, others: list[nn.Parameter] = ()):
    """What ``LightningModule.configure_optimizers`` returns for a run of ``config``."""
    c = config
    opt = make_optimizer(param_groups(strategy, c.lr_multipliers, c.lr, others), c)
    if c.scheduler == "none":
        return opt
    if c.scheduler == "cosine":
        total = c.max_steps if c.max_steps > 0 else c.max_epochs * c.epoch_length
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    if c.scheduler == "multistep":
        factor = MilestoneFactor(c.milestones, c.milestone_factors, c.gamma)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def scheduled_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base lr as the schedule has it now (a group's lr over its multiplier), for the metrics."""
    for group in optimizer.param_groups:
        if group.get(MULTIPLIER, 1.0) > 0:
            return group["lr"] / group.get(MULTIPLIER, 1.0)
    return 0.0
