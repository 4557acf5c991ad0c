"""MAML's meta-gradient and its batch norm, each checked against something independent of it.

* The batched MAML (vmap + torch.func.grad, with the hand-written batch-norm backward of
  ``metareg_strategies.batchnorm``) against the textbook computation: one task at a time with
  ``torch.autograd.grad(..., create_graph=True)`` through an untouched copy of the backbone, whose
  batch-norm layers are plain ``nn.BatchNorm2d`` in training mode (PyTorch's own kernels and their
  own double backward, no torch.func). None of the code under test runs in the reference.
* ``BatchStatisticsFunction`` itself (and its vmap rule) against finite differences:
  ``torch.autograd.gradcheck`` and ``gradgradcheck`` in float64.
* Both checks are shown to fail on a deliberately wrong backward (weight gradient x1.5; an input
  gradient that forgets that the batch statistics depend on the input).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from metareg_strategies.anil import ANIL
from metareg_strategies.batchnorm import BatchStatisticsFunction
from metareg_strategies.maml import MAML
from torch import nn

import metareg

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 4
SIZE = 4


class TinyMLP(nn.Module):
    """Flatten -> Linear -> tanh: smooth, so second-order terms are non-zero everywhere."""

    def __init__(self, inputs: int = SIZE * SIZE, hidden: int = 5):
        super().__init__()
        self.fc = nn.Linear(inputs, hidden)
        self.out_features = hidden

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


def tiny_conv():
    from metareg_backbones.conv import conv4

    return conv4(channels=1, image_size=SIZE, hidden=3, layers=2)


def tiny_resnet18():
    """Residual blocks that modify batch norm's output in place (ReLU(inplace=True), `out += identity`)."""
    from metareg_backbones.resnet import resnet18

    return resnet18(channels=1, image_size=SIZE, width=8)


def task_info(feature_dim: int) -> metareg.TaskInfo:
    return metareg.TaskInfo(
        ways=WAYS, shots=SHOTS, queries=QUERIES, test_ways=WAYS, test_shots=SHOTS, test_queries=QUERIES,
        num_train_classes=10, channels=1, image_size=SIZE, feature_dim=feature_dim,
    )


def episodes(seed: int = 0) -> metareg.EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(TASKS, WAYS * SHOTS, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    query = torch.randn(TASKS, WAYS * QUERIES, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    labels = lambda n: torch.arange(WAYS).repeat_interleave(n).expand(TASKS, -1)  # noqa: E731
    return metareg.EpisodeBatch(support, labels(SHOTS), query, labels(QUERIES), WAYS)


def build(cls, backbone, **options):
    strategy = cls(**options)
    strategy.setup(backbone, task_info(backbone.out_features))
    strategy.double().train()
    return strategy


def build_with_plain_copy(backbone_factory, **options):
    """MAML on a backbone, and an untouched float64 copy of that backbone taken before MAML swapped
    its batch norm: plain ``nn.BatchNorm2d`` that always normalises with the batch's statistics."""
    torch.manual_seed(0)
    backbone = backbone_factory()
    plain = copy.deepcopy(backbone).double().train()
    norms = [m for m in plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "the backbone has no batch norm: the check would not test it"
    for m in norms:
        m.track_running_stats = False
        m.running_mean = m.running_var = m.num_batches_tracked = None
    strategy = build(MAML, backbone, **options)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in strategy.backbone.modules())
    return strategy, plain


def mlp_model(params, x):
    h = torch.tanh(F.linear(x.flatten(1), params["backbone.fc.weight"], params["backbone.fc.bias"]))
    return F.linear(h, params["head.weight"], params["head.bias"])


def plain_model(plain: nn.Module):
    """``model(params, x)`` running the plain copy of the backbone with the given weights."""

    def model(params, x):
        body = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
        h = torch.func.functional_call(plain, body, (x,))  # parameter substitution only
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
    """Assert that the strategy's meta-gradient equals the per-task reference's; returns it."""
    ep = episodes()
    params = meta_params(strategy)
    wrt = list(params.values()) + list(extra)
    ours = torch.autograd.grad(our_loss(strategy, ep), wrt)
    ref = torch.autograd.grad(reference_loss(model, params, rates(strategy, params), ep, steps, first_order), wrt)
    assert all(b.abs().max() > 1e-6 for b in ref[-2:]), "reference gradient is zero, the check would be vacuous"
    for name, a, b in zip(list(params) + [f"extra{i}" for i in range(len(extra))], ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
    return ours


def compare_with_plain_batch_norm(backbone_factory, steps=2, first_order=False):
    strategy, plain = build_with_plain_copy(backbone_factory, adaptation_steps=steps, adaptation_lr=0.3,
                                            first_order=first_order)
    return compare(strategy, plain_model(plain), steps, first_order)


# ------------------------------------------------------------------ the batch-norm function alone
def bn_inputs(tasks: int | None = None, seed: int = 0):
    """Small float64 inputs of ``BatchStatisticsFunction``: x (3, 2, 2, 1) (batch, channels, height,
    width), weight and bias (2,), each with a leading axis of ``tasks`` when given (for the vmap rule)."""
    g = torch.Generator().manual_seed(seed)
    lead = () if tasks is None else (tasks,)
    x = torch.randn(*lead, 3, 2, 2, 1, generator=g, dtype=torch.float64)
    weight = 1 + 0.5 * torch.randn(*lead, 2, generator=g, dtype=torch.float64)
    bias = torch.randn(*lead, 2, generator=g, dtype=torch.float64)
    return tuple(t.requires_grad_() for t in (x, weight, bias))


def batch_norm(x, weight, bias):
    return BatchStatisticsFunction.apply(x, weight, bias, 1e-5)


# vmap over episodes, as MAML's inner loop runs it: weights shared (first step) or per episode (later steps).
VARIANTS = {
    "plain": (batch_norm, None),
    "vmap-shared-weights": (torch.func.vmap(batch_norm, in_dims=(0, None, None)), "x"),
    "vmap-per-episode-weights": (torch.func.vmap(batch_norm, in_dims=(0, 0, 0)), "all"),
    "vmap-episode-axis-1": (torch.func.vmap(batch_norm, in_dims=(1, 0, None)), "x1,w"),
}


def variant_inputs(kind):
    if kind is None:
        return bn_inputs()
    x, weight, bias = bn_inputs(tasks=2)
    if kind == "x":
        weight, bias = (t.detach()[0].requires_grad_() for t in (weight, bias))
    elif kind == "x1,w":
        x = x.detach().transpose(0, 1).requires_grad_()
        bias = bias.detach()[0].requires_grad_()
    return x, weight, bias


def finite_difference_checks(fn, inputs, *, raise_exception=False) -> bool:
    """gradcheck and gradgradcheck of ``fn`` (MAML's second order differentiates the backward)."""
    return torch.autograd.gradcheck(fn, inputs, raise_exception=raise_exception) and torch.autograd.gradgradcheck(
        fn, inputs, raise_exception=raise_exception
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_norm_function_passes_gradcheck_and_gradgradcheck(variant):
    fn, kind = VARIANTS[variant]
    inputs = variant_inputs(kind)
    assert finite_difference_checks(fn, inputs, raise_exception=True)
    # Forward: PyTorch's own training-mode batch norm, episode by episode.
    out = fn(*inputs)
    if kind is None:
        expected = F.batch_norm(inputs[0], None, None, inputs[1], inputs[2], training=True, eps=1e-5)
        torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------ the meta-gradient
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


@pytest.mark.parametrize("backbone", [tiny_conv, tiny_resnet18], ids=["conv4", "resnet18"])
def test_second_order_with_batch_norm_matches_plain_batch_norm_loop(backbone):
    compare_with_plain_batch_norm(backbone, steps=2)


def test_first_order_with_batch_norm_matches_plain_batch_norm_loop():
    compare_with_plain_batch_norm(tiny_conv, steps=1, first_order=True)


def test_bias_before_batch_norm_gets_no_meta_gradient():
    """Batch norm removes a per-channel constant, so a conv bias feeding it cannot change any loss:
    its exact meta-gradient is zero. (torch.func's own batch-norm double backward under vmap
    gets this wrong, which is why MAML swaps in its own batch-norm function.)"""
    torch.manual_seed(0)
    strategy = build(MAML, tiny_conv(), adaptation_steps=2, adaptation_lr=0.3)
    bias = strategy.backbone.features[0][0].bias
    weight = strategy.backbone.features[0][0].weight
    g_bias, g_weight = torch.autograd.grad(our_loss(strategy, episodes()), [bias, weight])
    assert g_bias.abs().max() < 1e-12
    assert g_weight.abs().max() > 1e-4


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


# ------------------------------------------------------------------ the checks catch a wrong backward
_correct_backward = BatchStatisticsFunction.backward


def _weight_gradient_too_large(ctx, grad):
    grad_x, grad_weight, grad_bias, none = _correct_backward(ctx, grad)
    return grad_x, 1.5 * grad_weight, grad_bias, none


def _input_gradient_ignoring_the_statistics(ctx, grad):
    # The classic mistake: differentiating as if mean and variance were constants.
    x, weight = ctx.saved_tensors
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    rstd = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + ctx.eps)
    _, grad_weight, grad_bias, none = _correct_backward(ctx, grad)
    return weight.view(shape) * rstd * grad, grad_weight, grad_bias, none


MUTANTS = {"weight-gradient-x1.5": _weight_gradient_too_large,
           "input-gradient-ignores-statistics": _input_gradient_ignoring_the_statistics}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_a_wrong_backward_fails_both_checks(mutant, monkeypatch):
    monkeypatch.setattr(BatchStatisticsFunction, "backward", staticmethod(MUTANTS[mutant]))
    for variant in ("plain", "vmap-per-episode-weights"):
        fn, kind = VARIANTS[variant]
        assert not finite_difference_checks(fn, variant_inputs(kind)), f"{variant}: gradcheck missed {mutant}"
    with pytest.raises(AssertionError, match="backbone.|head."):
        compare_with_plain_batch_norm(tiny_conv, steps=2)
