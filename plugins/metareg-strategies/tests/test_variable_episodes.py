"""Variable episodes, batched: a padded meta-batch gives every strategy that declares
``episodes:variable`` the same logits, loss and gradients as each episode alone.

Parametrized from the registry. Episodes differ in ways, in class-imbalanced shots and in query
counts, so every kind of padding is exercised (support slots, query slots, ways). The backbone has
batch norm: at evaluation it uses running statistics (per image) except under MAML, whose batch
statistics are then masked per episode; in training, batch norm is put in evaluation mode so that
a strategy's own grouping of episodes per backbone pass (ProtoNet's chunks) cannot differ from
one-at-a-time, and only padding is under test. The mutation tests break one mask each and show
the check failing.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import metareg
from metareg.options import describe
from metareg.plugins import load_plugins
from metareg.registry import Registry
from metareg.testing import tiny_backbone

VARIABLE = "episodes:variable"
SIZE = 8
# (shots per class, queries per class): 3-, 5- and 2-way, uneven support sets.
SHAPES = [([1, 3, 2], 2), ([2, 1, 1, 4, 1], 1), ([1, 1], 3)]


def _variable_strategies():
    return [pytest.param(p, id=p.record.name) for p in Registry(load_plugins(strict=False)).components("strategies")
            if VARIABLE in p.record.provides]


def build(provided, **extra) -> metareg.Strategy:
    factory = provided.record.load()
    options = dict(provided.record.test_options)
    # The one option variable episodes need: a learned head has a fixed number of outputs, a zero
    # head is re-learnt per episode (a learned head is refused, test_learned_head_is_refused).
    if "head_init" in {o.name for o in describe(factory, kind="strategies")}:
        options["head_init"] = "zero"
    torch.manual_seed(0)
    strategy = factory(**options | extra)
    backbone = tiny_backbone(1, 4)
    with torch.no_grad():  # running statistics that are not the identity, so evaluation uses them visibly
        backbone.norm.running_mean.uniform_(-0.2, 0.2)
        backbone.norm.running_var.uniform_(0.5, 2.0)
    strategy.setup(backbone, metareg.TaskInfo(
        ways=5, shots=1, queries=1, test_ways=5, test_shots=1, test_queries=1, num_train_classes=7, channels=1,
        image_size=SIZE, feature_dim=backbone.out_features, episodes="variable"))
    return strategy.double()  # float64: differences are padding's, not rounding's


def episodes(seed: int = 0) -> list[metareg.EpisodeBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shots, queries in SHAPES:
        ways = len(shots)
        ys = torch.repeat_interleave(torch.arange(ways), torch.tensor(shots)).unsqueeze(0)
        yq = torch.arange(ways).repeat_interleave(queries).unsqueeze(0)

        def draw(labels, ways=ways):
            base = (labels.double() + 1) / (ways + 1)
            noise = torch.rand(1, labels.shape[1], 1, SIZE, SIZE, generator=g, dtype=torch.float64)
            return base.view(1, -1, 1, 1, 1) * 0.5 + noise * 0.5

        out.append(metareg.EpisodeBatch(draw(ys), ys, draw(yq), yq, ways))
    return out


def _grads(strategy, loss) -> list[torch.Tensor]:
    params = [p for p in strategy.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


def _training_mode(strategy):
    strategy.train()
    for m in strategy.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def mismatch(strategy, alone: list[metareg.EpisodeBatch]) -> str | None:
    """What differs between a padded batch of ``alone`` and each episode on its own; None when nothing does."""
    padded = metareg.EpisodeBatch.pad(alone)
    grad = torch.enable_grad() if strategy.needs_grad_at_eval else contextlib.nullcontext()
    strategy.eval()
    with grad:
        logits = strategy(padded).detach()
        for b, episode in enumerate(alone):
            ref = strategy(episode).detach()[0]
            q, w = ref.shape
            if not torch.allclose(logits[b, :q, :w], ref, rtol=1e-6, atol=1e-7):
                return f"episode {b}: logits differ by {(logits[b, :q, :w] - ref).abs().max():.3g}"
            if w < padded.ways and not torch.isneginf(logits[b, :q, w:]).all():
                return f"episode {b}: logits of padded ways are not -inf"
    if not torch.equal(padded.query_accuracy(logits), torch.cat([e.query_accuracy(strategy(e)) for e in alone])):
        return "accuracies differ"
    if strategy.train_batches != "episodes":  # the supervised baseline trains on labelled batches
        return None
    _training_mode(strategy)
    loss = strategy.loss(padded).loss
    losses = [strategy.loss(e).loss for e in alone]
    ref = torch.stack(losses).mean()
    if not torch.isfinite(loss) or not torch.allclose(loss, ref, rtol=1e-6, atol=1e-9):
        return f"loss {loss.item()} against {ref.item()} alone"
    for got, want in zip(_grads(strategy, loss), _grads(strategy, ref), strict=True):
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-9):
            return f"gradients differ by {(got - want).abs().max():.3g}"
    return None


def test_some_strategies_declare_variable_episodes():
    names = {p.values[0].record.name for p in _variable_strategies()}
    assert {"prototypicalnetworks", "maml", "anil", "metaoptnet", "default"} <= names


@pytest.mark.parametrize("provided", _variable_strategies())
def test_padded_batch_equals_each_episode_alone(provided):
    assert mismatch(build(provided), episodes()) is None


@pytest.mark.parametrize("options", [{"base_learner": "ridge"}, {"svm_exact": False}], ids=["ridge", "svm-unrolled"])
def test_metaoptnet_base_learners_on_padded_batches(options):
    (provided,) = [p.values[0] for p in _variable_strategies() if p.values[0].record.name == "metaoptnet"]
    assert mismatch(build(provided, **options), episodes()) is None


def _strategy(name):
    (provided,) = [p.values[0] for p in _variable_strategies() if p.values[0].record.name == name]
    return build(provided)


def _onehot_without_mask(self, dtype=torch.float32):
    return F.one_hot(self.support_labels.clamp(min=0), self.ways).to(dtype)  # padding counts as class 0


def _svm_ways_unpinned(original):
    def solve(*args, way_mask=None, **kwargs):
        return original(*args, way_mask=None if way_mask is None else torch.ones_like(way_mask), **kwargs)
    return solve


@pytest.mark.parametrize("name, target, replacement", [
    ("prototypicalnetworks", "metareg.EpisodeBatch.support_onehot", lambda: _onehot_without_mask),
    ("prototypicalnetworks", "metareg.EpisodeBatch.mask_ways", lambda: lambda self, logits: logits),
    ("maml", "metareg_strategies.maml.sample_mask", lambda: lambda module, mask: contextlib.nullcontext()),
    ("metaoptnet", "metareg_strategies.metaoptnet.crammer_singer_svm",
     lambda: _svm_ways_unpinned(__import__("metareg_strategies.svm").svm.crammer_singer_svm)),
], ids=["protonet-mean-counts-padding", "protonet-padded-ways-win", "maml-batchnorm-sees-padding",
        "metaoptnet-padded-ways-free"])
def test_the_check_fails_on_a_broken_mask(name, target, replacement, monkeypatch):
    strategy = _strategy(name)
    monkeypatch.setattr(target, replacement())
    assert mismatch(strategy, episodes()) is not None


def test_learned_head_is_refused():
    (provided,) = [p.values[0] for p in _variable_strategies() if p.values[0].record.name == "maml"]
    with pytest.raises(metareg.ConfigError, match="head_init=zero"):
        provided.record.load()().setup(tiny_backbone(1, 4), metareg.TaskInfo(
            ways=5, shots=1, queries=1, test_ways=5, test_shots=1, test_queries=1, num_train_classes=7, channels=1,
            image_size=SIZE, feature_dim=16, episodes="variable"))
