"""The first-party strategies maml, anil, metaoptnet and default on tiny backbones and images.

Episodes are drawn from a trivially separable distribution (each episode picks random binary
patterns as its classes; samples are noisy copies), so a few optimisation steps must reach
high accuracy. The MAML gradient check is in test_maml_gradcheck.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from metareg_strategies.anil import ANIL
from metareg_strategies.maml import MAML
from metareg_strategies.metaoptnet import MetaOptNet, ridge_scores
from metareg_strategies.protonet import PrototypicalNetworks
from metareg_strategies.supervised import Supervised
from metareg_strategies.svm import crammer_singer_svm
from torch import nn

import metareg

SIZE = 8
STRATEGIES = {
    "maml": lambda: MAML(adaptation_lr=0.5),
    "maml-zero-head": lambda: MAML(head_init="zero", adaptation_steps=2, learn_lr=True),
    "anil": lambda: ANIL(adaptation_lr=0.5),
    "metaoptnet-svm": lambda: MetaOptNet(),
    "metaoptnet-ridge": lambda: MetaOptNet(base_learner="ridge", ridge_lambda=1.0),
    "default": lambda: Supervised(),
}


def mlp() -> nn.Module:
    """A custom backbone following the contract: any nn.Module with out_features."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), nn.ReLU(), nn.Linear(32, 16))
    net.out_features = 16
    return net


def conv() -> nn.Module:
    from metareg_backbones.conv import conv4

    return conv4(channels=1, image_size=SIZE, hidden=4, layers=2)


def resnet12() -> nn.Module:
    from metareg_backbones.resnet12 import resnet12 as factory

    return factory(channels=1, image_size=SIZE, widths=(4, 4, 8, 8))


def resnet18() -> nn.Module:
    from metareg_backbones.resnet import resnet18 as factory

    return factory(channels=1, image_size=SIZE, width=8)


def l2l_resnet12() -> nn.Module:
    pytest.importorskip("learn2learn")
    from metareg_learn2learn.models import resnet12 as factory

    return factory(channels=1, image_size=2 * SIZE, wider=False, dropblock_dropout=0.0)


BACKBONES = {"mlp": mlp, "conv4": conv}
# torchvision's and learn2learn's ResNets modify batch norm's output in place (ReLU(inplace=True),
# `out += residual`), which MAML's batch-statistics norm must allow under vmap (it once failed:
# "Output 0 of VmappedBatchStatisticsFunction is a view and is being modified inplace").
# Image sizes: learn2learn's ResNet-12 pools four times.
IN_PLACE_RELU_BACKBONES = {"resnet18": (resnet18, SIZE), "l2l-resnet12": (l2l_resnet12, 2 * SIZE)}


def task(backbone, ways=3, test_ways=None, classes=10) -> metareg.TaskInfo:
    return metareg.TaskInfo(
        ways=ways, shots=2, queries=3, test_ways=test_ways or ways, test_shots=2, test_queries=3,
        num_train_classes=classes, channels=1, image_size=SIZE, feature_dim=backbone.out_features,
    )


def build(name, backbone_factory=mlp, **task_kw):
    torch.manual_seed(0)
    backbone = backbone_factory()
    strategy = STRATEGIES[name]()
    strategy.setup(backbone, task(backbone, **task_kw))
    return strategy


def separable(count=4, ways=3, shots=2, queries=3, seed=0, support_labels=None, size=SIZE) -> metareg.EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(count, ways, 1, size, size, generator=g) > 0.5).float()
    if support_labels is None:
        support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)

    def draw(labels):
        images = patterns[:, labels]
        return images + 0.1 * torch.randn(images.shape, generator=g)

    return metareg.EpisodeBatch(draw(support_labels), support_labels.expand(count, -1), draw(query_labels),
                                query_labels.expand(count, -1), ways)


def accuracy(logits, labels):
    return (logits.argmax(-1) == labels).float().mean().item()


def train_step_loss(strategy, episodes, step=0):
    if strategy.train_batches == "labelled":
        g = torch.Generator().manual_seed(1000 + step)
        labels = torch.randint(0, strategy.task.num_train_classes, (24,), generator=g)
        fixed = torch.Generator().manual_seed(7)  # the training classes' patterns
        patterns = (torch.rand(strategy.task.num_train_classes, 1, SIZE, SIZE, generator=fixed) > 0.5).float()
        images = patterns[labels] + 0.1 * torch.randn(24, 1, SIZE, SIZE, generator=g)
        return strategy.labelled_loss(images, labels)
    return strategy.loss(episodes)


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_loss_is_finite_and_reaches_the_backbone(name, backbone):
    strategy = build(name, BACKBONES[backbone])
    strategy.train()
    out = train_step_loss(strategy, separable())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in strategy.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    if name != "default":
        assert out.logits.shape == (4, 9, 3)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_forward_gives_query_logits_in_eval_mode(name, backbone):
    strategy = build(name, BACKBONES[backbone]).eval()
    before = {k: v.clone() for k, v in strategy.state_dict().items()}
    with torch.set_grad_enabled(strategy.needs_grad_at_eval):
        logits = strategy(separable())
    assert logits.shape == (4, 9, 3) and torch.isfinite(logits).all()
    assert not logits.requires_grad or strategy.needs_grad_at_eval
    after = strategy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "evaluation must not change the model"


def test_resnet12_backbone_if_available():
    pytest.importorskip("metareg_backbones.resnet12")
    for name in STRATEGIES:
        strategy = build(name, resnet12).train()
        out = train_step_loss(strategy, separable(count=1))
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in strategy.backbone.parameters()), name


@pytest.mark.parametrize("backbone", list(IN_PLACE_RELU_BACKBONES))
@pytest.mark.parametrize("name", ["maml", "anil"])
def test_gradient_strategies_train_and_evaluate_backbones_with_in_place_relu(name, backbone):
    factory, size = IN_PLACE_RELU_BACKBONES[backbone]
    strategy = build(name, factory).train()
    episodes = separable(count=2, size=size)
    out = strategy.loss(episodes)
    out.loss.backward()
    grads = [p.grad for p in strategy.backbone.parameters()]
    assert torch.isfinite(out.loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    strategy.eval()
    with torch.set_grad_enabled(strategy.needs_grad_at_eval):
        logits = strategy(episodes)
    assert logits.shape == (2, 9, 3) and torch.isfinite(logits).all()


def test_pytorchs_generated_vmap_rule_fails_where_batch_statistics_norm_works(monkeypatch):
    """The test above covers the in-place case: with PyTorch's generated vmap rule (the old code) it fails."""
    from metareg_strategies import batchnorm

    class Generated(batchnorm.BatchStatisticsFunction):
        generate_vmap_rule = True
        vmap = torch.autograd.Function.vmap

    strategy = build("maml", resnet18).train()
    monkeypatch.setattr(batchnorm, "BatchStatisticsFunction", Generated)
    with pytest.raises(RuntimeError, match="is a view and is being modified inplace"):
        strategy.loss(separable(count=2))


def test_metareg_run_maml_with_resnet18(tmp_path):
    from metareg.cli import cli

    out = tmp_path / "maml-resnet18"
    result = CliRunner().invoke(cli, [
        "run", "--strategy", "maml", "--backbone", "resnet18", "--backbone-opt", "width=8",
        "--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6", "--ways", "3", "--shots", "1",
        "--queries", "1", "--test-queries", "1", "--meta-batch-size", "2", "--epoch-length", "1", "--max-epochs", "1",
        "--max-steps", "1",
        "--val-num-tasks", "2", "--test-num-tasks", "2", "--eval-meta-batch-size", "2", "--no-progress",
        "--output-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3-way 1-shot" in result.output
    assert json.loads((out / "summary.json").read_text())["backbone"] == "resnet18"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_uneven_support_counts_at_prediction(name):
    # 4 ways with 1, 3, 2 and 5 support images; any strategy must take class statistics from labels.
    support_labels = torch.tensor([0, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3])
    episodes = separable(count=2, ways=4, support_labels=support_labels)
    episodes.query_labels = None
    kw = {"ways": 4} if name in ("maml", "anil") else {}
    strategy = build(name, **kw).eval()
    with torch.set_grad_enabled(strategy.needs_grad_at_eval):
        logits = strategy(episodes)
        # Support order must not matter (no reshapes into (ways, shots)).
        order = torch.randperm(11, generator=torch.Generator().manual_seed(5))
        shuffled = metareg.EpisodeBatch(episodes.support[:, order], episodes.support_labels[:, order],
                                        episodes.query, None, 4)
        torch.testing.assert_close(strategy(shuffled), logits, rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 12, 4) and torch.isfinite(logits).all()
    if name == "default":  # nearest class mean classifies well-separated patterns from the start
        assert accuracy(logits, torch.arange(4).repeat_interleave(3)) > 0.9


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_few_steps_learn_separable_episodes(name):
    strategy = build(name)
    opt = torch.optim.Adam(strategy.parameters(), lr=3e-3)
    test = separable(count=8, seed=99)

    def evaluate():
        strategy.eval()
        with torch.set_grad_enabled(strategy.needs_grad_at_eval):
            logits = strategy(test)
        strategy.train()
        return F.cross_entropy(logits.flatten(0, 1), test.query_labels.flatten()).item(), accuracy(
            logits, test.query_labels)
    losses = []
    for step in range(30):
        out = train_step_loss(strategy, separable(seed=step), step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    _, acc = evaluate()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert acc >= 0.9, f"{name}: accuracy {acc:.2f} after 30 steps on separable episodes"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_mixed_precision_training_step(name, dtype):
    strategy = build(name, conv).train()
    with torch.autocast("cpu", dtype=dtype):
        out = train_step_loss(strategy, separable())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in strategy.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_maml_bf16_inner_loop_close_to_float32():
    strategy = build("maml", conv).train()
    episodes = separable()
    full = strategy(episodes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = strategy(episodes)
    assert low.dtype == torch.float32
    assert (low - full).abs().max() < 0.1 * full.abs().max() + 0.05
    strategy.inner_precision = "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact = strategy(episodes)
    torch.testing.assert_close(exact, full)


# ------------------------------------------------------------------ MAML specifics
def test_maml_uses_batch_statistics_and_keeps_no_running_stats():
    strategy = build("maml", conv)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in strategy.backbone.modules())
    assert not any("running" in k for k in strategy.state_dict())
    # Transductive evaluation: each query batch is normalised with its own statistics, so scaling
    # every query image (which multiplies the first conv's output, bias aside) changes nothing.
    strategy.eval()
    episodes = separable(count=1)
    shifted = metareg.EpisodeBatch(episodes.support, episodes.support_labels, episodes.query * 3,
                                   episodes.query_labels, 3)
    a, b = strategy(episodes), strategy(shifted)
    assert torch.allclose(a, b, atol=1e-3)


def test_maml_test_adaptation_steps_apply_only_in_eval():
    strategy = build("maml")
    strategy.test_adaptation_steps = 3
    episodes = separable()
    strategy.eval()
    three = strategy(episodes)
    strategy.adaptation_steps, strategy.test_adaptation_steps = 3, 1
    strategy.train()
    torch.testing.assert_close(strategy(episodes).detach(), three)


def test_maml_test_ways_mismatch_is_a_clear_config_error():
    backbone = mlp()
    with pytest.raises(metareg.ConfigError, match=r"--test-ways.*--ways.*head_init=zero"):
        MAML().setup(backbone, task(backbone, ways=5, test_ways=10))
    with pytest.raises(metareg.ConfigError, match="head_init=zero"):
        ANIL().setup(backbone, task(backbone, ways=5, test_ways=3))
    strategy = build("maml", ways=3).eval()
    with pytest.raises(metareg.ConfigError, match="3 outputs but these episodes are 4-way"):
        strategy(separable(ways=4))


def test_zero_head_works_for_any_number_of_ways():
    strategy = MAML(head_init="zero", adaptation_steps=10, adaptation_lr=0.5)
    torch.manual_seed(0)
    backbone = mlp()
    strategy.setup(backbone, task(backbone, ways=3, test_ways=6))
    strategy.eval()
    logits = strategy(separable(ways=6))
    assert logits.shape == (4, 18, 6)
    assert accuracy(logits, separable(ways=6).query_labels) > 0.9  # a zero head fitted to the support set


@pytest.mark.parametrize(
    ("factory", "options", "message"),
    [
        (MAML, {"adaptation_steps": 0}, "adaptation_steps must be a positive integer"),
        (MAML, {"test_adaptation_steps": -1}, "test_adaptation_steps"),
        (MAML, {"adaptation_lr": 0.0}, "adaptation_lr must be positive"),
        (MAML, {"adaptation_lr": float("inf")}, "adaptation_lr must be positive and finite"),
        (MAML, {"head_init": "random"}, "head_init must be 'learned' or 'zero'"),
        (MAML, {"first_order": "false"}, "first_order must be true or false"),
        (MAML, {"inner_precision": "fp8"}, "inner_precision"),
        (ANIL, {"adaptation_steps": 1.5}, "adaptation_steps"),
        (MetaOptNet, {"base_learner": "lasso"}, "base_learner must be 'svm' or 'ridge'"),
        (MetaOptNet, {"svm_c": -1.0}, "svm_c must be positive"),
        (MetaOptNet, {"svm_iterations": 0}, "svm_iterations"),
        (MetaOptNet, {"ridge_lambda": 0.0}, "ridge_lambda must be positive"),
        (MetaOptNet, {"learn_scale": 1}, "learn_scale must be true or false"),
        (Supervised, {"distance": "manhattan"}, "distance must be 'euclidean' or 'cosine'"),
        (Supervised, {"temperature": 0.0}, "temperature must be positive"),
        (PrototypicalNetworks, {"distance": "cosin"}, r"distance must be 'euclidean' or 'cosine', got 'cosin'; "
                                                      r"did you mean 'cosine'\?"),
        (PrototypicalNetworks, {"distance": "Euclidean"}, "distance must be 'euclidean' or 'cosine'"),
        (PrototypicalNetworks, {"temperature": float("nan")}, "temperature must be positive and finite"),
        (Supervised, {"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_options_are_option_errors(factory, options, message):
    with pytest.raises(metareg.OptionError, match=message):
        factory(**options)


def _first_party_strategies():
    from metareg.plugins import load_plugins
    from metareg.registry import Registry

    return [p for p in Registry(load_plugins(strict=False)).components("strategies")
            if p.plugin.distribution == "metareg-strategies"]


def _choice_options():
    """(strategy, option, choices) for every Literal option of every first-party strategy, from the registry."""
    from typing import Literal, get_args, get_origin

    from metareg.options import describe

    cases = []
    for provided in _first_party_strategies():
        for option in describe(provided.record.load()):
            if get_origin(option.type) is Literal:
                cases.append(pytest.param(provided.record.load(), option.name, get_args(option.type),
                                          id=f"{provided.record.name}-{option.name}"))
    return cases


@pytest.mark.parametrize(("factory", "option", "choices"), _choice_options())
def test_a_misspelt_choice_is_refused_from_python_naming_the_choices(factory, option, choices):
    """From Python no CLI converts the value first: the constructor itself must refuse it."""
    misspelt = str(choices[-1])[:-1]  # 'cosine' -> 'cosin'
    with pytest.raises(ValueError, match=rf"{option} must be .*got {misspelt!r}") as caught:
        factory(**{option: misspelt})
    assert isinstance(caught.value, metareg.OptionError)
    assert all(repr(c) in str(caught.value) for c in choices)
    for choice in choices:  # and every listed choice is accepted
        factory(**{option: choice})


def test_the_choice_check_is_not_vacuous():
    # Were the Literal annotations no longer resolved, the test above would silently run no cases.
    assert {c.id for c in _choice_options()} >= {
        "prototypicalnetworks-distance", "default-distance", "maml-head_init", "maml-inner_precision",
        "anil-head_init", "metaoptnet-base_learner"}


def test_options_bind_from_command_line_text():
    from metareg.options import bind

    kwargs = bind(MAML, {"first_order": "true", "adaptation_steps": "2", "test_adaptation_steps": "none"},
                  component="maml")
    assert kwargs == {"first_order": True, "adaptation_steps": 2, "test_adaptation_steps": None}
    with pytest.raises(metareg.OptionError, match="head_init"):
        bind(MAML, {"head_init": "ones"}, component="maml")
    with pytest.raises(metareg.OptionError, match="Did you mean 'adaptation_lr'"):
        bind(MAML, {"adaptation_rl": "0.1"}, component="maml")


@pytest.mark.parametrize(
    ("name", "option"),
    [("maml", "first_order"), ("anil", "head_init"), ("metaoptnet", "base_learner"), ("default", "distance")],
)
def test_metareg_info_shows_options(name, option):
    from metareg.cli import cli

    result = CliRunner().invoke(cli, ["info", "strategies", name, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    options = {o["name"]: o for o in doc["options"]}
    assert option in options and options[option]["help"]
    listed = CliRunner().invoke(cli, ["list", "strategies"]).output
    for strategy in ("prototypicalnetworks", "maml", "anil", "metaoptnet", "default"):
        assert strategy in listed


# ------------------------------------------------------------------ base learners
def test_ridge_matches_numpy_least_squares():
    g = torch.Generator().manual_seed(0)
    support = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    query = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 2, 1]])
    lam = 0.7
    ours = ridge_scores(support, labels, query, 3, lam)
    for b in range(2):
        x, y = support[b].numpy(), np.eye(3)[labels[b].numpy()]
        # min ||X W - Y||^2 + lam ||W||^2  as least squares on the augmented system [X; sqrt(lam) I] W = [Y; 0]
        aug_x = np.vstack([x, np.sqrt(lam) * np.eye(5)])
        aug_y = np.vstack([y, np.zeros((5, 3))])
        w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
        np.testing.assert_allclose(ours[b].numpy(), query[b].numpy() @ w, rtol=1e-9, atol=1e-10)


def test_svm_matches_the_hand_solved_dual():
    # Two points x = +1 (class 0) and x = -1 (class 1). By symmetry alpha = [[t, -t], [-t, t]] and the
    # dual objective is 6 t^2 - 2 t (with MetaOptNet's +I term): t = 1/6, clipped at C when C < 1/6.
    x = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1]])
    for c, t in ((1.0, 1 / 6), (0.1, 0.1)):
        scores, alpha = crammer_singer_svm(x, labels, x, 2, c=c, return_alpha=True)
        torch.testing.assert_close(alpha[0], torch.tensor([[t, -t], [-t, t]], dtype=torch.float64))
        # w_0 = sum_i alpha[i, 0] x_i = 2t: scores for x=+1 are (2t, -2t)
        torch.testing.assert_close(scores[0], torch.tensor([[2 * t, -2 * t], [-2 * t, 2 * t]], dtype=torch.float64))


@pytest.mark.parametrize("c", [0.05, 1.0, 10.0])
def test_svm_solution_satisfies_the_kkt_conditions(c):
    g = torch.Generator().manual_seed(1)
    support = 3 * torch.randn(3, 10, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 10), generator=g)
    _, alpha = crammer_singer_svm(support, labels, support, 4, c=c, return_alpha=True, iterations=20)
    y = F.one_hot(labels, 4).double()
    upper = c * y
    assert (alpha - upper).max() < 1e-9, "alpha <= C y"
    assert alpha.sum(-1).abs().max() < 1e-9, "rows sum to zero"
    # Stationarity: K alpha + alpha - Y + nu_i + mu = 0 with mu >= 0, mu = 0 where alpha < upper.
    residual = -(support @ support.transpose(1, 2) @ alpha + alpha - y)  # = nu_i + mu
    free = (upper - alpha) > 1e-7
    nu = torch.where(free, residual, torch.inf).amin(-1)  # on free coordinates residual == nu_i
    spread = torch.where(free, residual - nu.unsqueeze(-1), 0.0).abs().max()
    assert spread < 1e-7, "free coordinates share their row's multiplier"
    mu = torch.where(free, 0.0, residual - nu.unsqueeze(-1))
    assert mu.min() > -1e-7, "bound multipliers are non-negative"


def test_svm_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    support = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2]])
    assert torch.autograd.gradcheck(lambda s: crammer_singer_svm(s, labels, query, 3, c=0.5), (support,))


def test_svm_unrolled_mode_approaches_the_exact_solution():
    g = torch.Generator().manual_seed(3)
    support = torch.randn(2, 8, 4, generator=g)
    labels = torch.randint(0, 3, (2, 8), generator=g)
    exact = crammer_singer_svm(support, labels, support, 3, c=0.5)
    unrolled = crammer_singer_svm(support, labels, support, 3, c=0.5, iterations=300, exact=False)
    torch.testing.assert_close(unrolled, exact, atol=1e-3, rtol=1e-3)


def test_metaoptnet_scale_is_learnt():
    strategy = build("metaoptnet-svm")
    strategy.loss(separable()).loss.backward()
    assert strategy.scale.grad is not None and strategy.scale.grad != 0


# ------------------------------------------------------------------ default (supervised)
def test_default_trains_on_labelled_batches_with_a_head_over_all_training_classes():
    strategy = build("default", classes=12)
    assert strategy.train_batches == "labelled"
    assert strategy.head.out_features == 12
    out = strategy.labelled_loss(torch.rand(5, 1, SIZE, SIZE), torch.tensor([0, 3, 11, 11, 7]))
    assert out.logits.shape == (5, 12)
    out.loss.backward()
    assert strategy.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_default_evaluates_by_nearest_class_mean(distance):
    backbone = mlp()
    strategy = Supervised(distance=distance, temperature=1.0)
    strategy.setup(backbone, task(backbone))
    strategy.eval()
    episodes = separable()
    with torch.no_grad():
        logits = strategy(episodes)
        features = strategy.embed(torch.cat([episodes.support, episodes.query], 1))
    support, query = features[:, :6], features[:, 6:]
    means = support.view(4, 3, 2, -1).mean(2)
    if distance == "cosine":
        expected = F.cosine_similarity(query.unsqueeze(2), means.unsqueeze(1), dim=-1)
    else:
        expected = -((query.unsqueeze(2) - means.unsqueeze(1)) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["metaoptnet-svm", "metaoptnet-ridge", "default", "maml"])
def test_prediction_protocol_matches_forward(name):
    """fit_support once + predict_query per batch (metareg predict) gives forward's logits."""
    strategy = build(name).eval()
    support_labels = torch.tensor([0, 1, 1, 2, 2, 2])
    episodes = separable(count=1, support_labels=support_labels)
    with torch.set_grad_enabled(strategy.needs_grad_at_eval):
        expected = strategy(episodes)[0]
        state = strategy.fit_support(episodes.support[0], support_labels, 3)
        got = strategy.predict_query(state, episodes.query[0], 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
