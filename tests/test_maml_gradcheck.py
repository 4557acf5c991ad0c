"""MAML's batched (vmap + torch.func.grad) meta-gradient against a plain autograd loop.

The reference adapts one task at a time with ``torch.autograd.grad(..., create_graph=True)``
(``create_graph=False`` for first order), sums the query losses, and differentiates: the
textbook MAML computation, with no torch.func involved for the tiny hand-written model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from metareg_strategies.anil import ANIL
from metareg_strategies.maml import MAML
from torch import nn

import metareg

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 4


class TinyMLP(nn.Module):
    """Flatten -> Linear -> tanh: smooth, so second-order terms are non-zero everywhere."""

    def __init__(self, inputs: int = 16, hidden: int = 5):
        super().__init__()
        self.fc = nn.Linear(inputs, hidden)
        self.out_features = hidden

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


def tiny_conv():
    from metareg_backbones.conv import conv4

    return conv4(channels=1, image_size=4, hidden=3, layers=2)


def task_info(feature_dim: int) -> metareg.TaskInfo:
    return metareg.TaskInfo(
        ways=WAYS, shots=SHOTS, queries=QUERIES, test_ways=WAYS, test_shots=SHOTS, test_queries=QUERIES,
        num_train_classes=10, channels=1, image_size=4, feature_dim=feature_dim,
    )


def episodes(seed: int = 0) -> metareg.EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(TASKS, WAYS * SHOTS, 1, 4, 4, generator=g, dtype=torch.float64)
    query = torch.randn(TASKS, WAYS * QUERIES, 1, 4, 4, generator=g, dtype=torch.float64)
    labels = lambda n: torch.arange(WAYS).repeat_interleave(n).expand(TASKS, -1)  # noqa: E731
    return metareg.EpisodeBatch(support, labels(SHOTS), query, labels(QUERIES), WAYS)


def build(cls, backbone, **options):
    strategy = cls(**options)
    strategy.setup(backbone, task_info(backbone.out_features))
    strategy.double().train()
    return strategy


def mlp_model(params, x):
    h = torch.tanh(F.linear(x.flatten(1), params["backbone.fc.weight"], params["backbone.fc.bias"]))
    return F.linear(h, params["head.weight"], params["head.bias"])


def functional_model(strategy):
    def model(params, x):
        body = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        h = torch.func.functional_call(strategy.backbone, body, (x,))
        return F.linear(h, params["head.weight"], params["head.bias"])

    return model


def reference_loss(model, params, lrs, ep, steps, first_order):
    """Plain autograd MAML: one task at a time, per-task query losses averaged."""
    total = 0.0
    for b in range(TASKS):
        fast = dict(params)
        for _ in range(steps):
            inner = F.cross_entropy(model(fast, ep.support[b]), ep.support_labels[b])
            grads = torch.autograd.grad(inner, list(fast.values()), create_graph=not first_order)
            fast = {k: fast[k] - lrs[k] * g for (k, g) in zip(fast, grads, strict=True)}
        total = total + F.cross_entropy(model(fast, ep.query[b]), ep.query_labels[b])
    return total / TASKS


def meta_params(strategy):
    return dict(strategy.adaptable_named_parameters())


def rates(strategy, params):
    if strategy.learn_lr:
        return {k: strategy.inner_lrs[k.replace(".", "__")] for k in params}
    return {k: strategy.adaptation_lr for k in params}


def our_loss(strategy, ep):
    # Strategy.loss casts logits to float32 (right for mixed precision); stay in float64 here.
    return F.cross_entropy(strategy(ep).flatten(0, 1), ep.query_labels.flatten())


def compare(strategy, model, steps, first_order, extra=()):
    ep = episodes()
    params = meta_params(strategy)
    wrt = list(params.values()) + list(extra)
    ours = torch.autograd.grad(our_loss(strategy, ep), wrt)
    ref = torch.autograd.grad(reference_loss(model, params, rates(strategy, params), ep, steps, first_order), wrt)
    assert all(b.abs().max() > 1e-6 for b in ref[-2:]), "reference gradient is zero, the check would be vacuous"
    for name, a, b in zip(list(params) + [f"extra{i}" for i in range(len(extra))], ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
    return ours


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_matches_autograd_loop(steps):
    torch.manual_seed(0)
    strategy = build(MAML, TinyMLP(), adaptation_steps=steps, adaptation_lr=0.5)
    second = compare(strategy, mlp_model, steps, first_order=False)
    # And it really is second order: first-order MAML gives a clearly different gradient here.
    torch.manual_seed(0)
    fo = build(MAML, TinyMLP(), adaptation_steps=steps, adaptation_lr=0.5, first_order=True)
    first = compare(fo, mlp_model, steps, first_order=True)
    assert max((a - b).abs().max().item() for a, b in zip(second, first, strict=True)) > 1e-4


def test_second_order_with_batch_norm_backbone_matches_autograd_loop():
    """Conv + batch norm (batch statistics), checked against per-task functional_call + autograd.grad."""
    torch.manual_seed(0)
    strategy = build(MAML, tiny_conv(), adaptation_steps=2, adaptation_lr=0.3)
    compare(strategy, functional_model(strategy), 2, first_order=False)


def test_bias_before_batch_norm_gets_no_meta_gradient():
    """Batch norm removes a per-channel constant, so a conv bias feeding it cannot change any loss:
    its exact meta-gradient is zero. (torch.func's own batch-norm double backward under vmap
    gets this wrong, which is why MAML swaps in a plain-ops batch norm.)"""
    torch.manual_seed(0)
    strategy = build(MAML, tiny_conv(), adaptation_steps=2, adaptation_lr=0.3)
    bias = strategy.backbone.features[0][0].bias
    weight = strategy.backbone.features[0][0].weight
    g_bias, g_weight = torch.autograd.grad(our_loss(strategy, episodes()), [bias, weight])
    assert g_bias.abs().max() < 1e-12
    assert g_weight.abs().max() > 1e-4


def test_first_order_with_batch_norm_backbone_matches_autograd_loop():
    torch.manual_seed(0)
    strategy = build(MAML, tiny_conv(), adaptation_steps=1, adaptation_lr=0.3, first_order=True)
    compare(strategy, functional_model(strategy), 1, first_order=True)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_learning_rates_get_the_reference_gradient(first_order):
    torch.manual_seed(0)
    strategy = build(MAML, TinyMLP(), adaptation_steps=2, learn_lr=True, first_order=first_order)
    with torch.no_grad():  # distinct rates per weight, so a mix-up of names would show
        for p in strategy.inner_lrs.values():
            p.uniform_(0.1, 0.6)
    lrs = list(strategy.inner_lrs.values())
    grads = compare(strategy, mlp_model, 2, first_order, extra=lrs)
    for g in grads[-len(lrs):]:
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_anil_matches_autograd_loop_on_the_head():
    torch.manual_seed(0)
    strategy = build(ANIL, TinyMLP(), adaptation_steps=3, adaptation_lr=0.5)
    ep = episodes()
    head = meta_params(strategy)
    body = list(strategy.backbone.parameters())
    wrt = list(head.values()) + body
    ours = torch.autograd.grad(our_loss(strategy, ep), wrt)

    def head_model(params, x):  # x holds images; the body is not adapted
        return F.linear(strategy.backbone(x), params["head.weight"], params["head.bias"])

    ref = torch.autograd.grad(reference_loss(head_model, head, rates(strategy, head), ep, 3, False), wrt)
    for a, b in zip(ours, ref, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
