"""metareg.testing catches broken components with a message that says what broke.

Each check is run on a good component (passes) and on deliberately broken variants
(AssertionError naming the problem)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg.plugins import load_plugins
from metareg.registry import Registry
from metareg.testing import (
    check_backbone,
    check_combinations,
    check_dataset,
    check_strategy,
    check_transform,
    make_episodes,
)

# ------------------------------------------------------------------------------- backbones


class Net(nn.Module):
    def __init__(self, channels, out=8, declared=None, detach=False, nan=False):
        super().__init__()
        self.conv = nn.Conv2d(channels, out, 3, padding=1)
        self.out_features = out if declared is None else declared
        self.detach, self.nan = detach, nan

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        if self.nan:
            y = y * float("nan")
        return y.detach() if self.detach else y


def good_backbone(*, channels: int = 3, image_size: int = 28, out: int = 8) -> nn.Module:
    """out: features."""
    return Net(channels, out)


def test_backbone_passes_and_reports_feature_sizes():
    assert check_backbone(good_backbone, shapes=[(1, 28, 28), (3, 16, 16)], options={"out": 5}) == {
        (1, 28, 28): 5,
        (3, 16, 16): 5,
    }


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda c: Net(c, declared=7), r"returned shape \(2, 8\), expected \(2, out_features=7\)"),
        (lambda c: Net(c, declared="8"), "out_features > 0"),
        (lambda c: Net(c, detach=True), "does not require grad|reached none"),
        (lambda c: Net(c, nan=True), "NaN or infinite"),
        (lambda c: "not a module", "must return an nn.Module"),
    ],
)
def test_backbone_faults_are_named(make, message):
    def factory(*, channels: int = 3, image_size: int = 28) -> nn.Module:
        return make(channels)

    with pytest.raises((AssertionError, RuntimeError), match=message):
        check_backbone(factory, shapes=[(1, 12, 12)])


def test_backbone_that_ignores_channels_fails_on_rgb():
    def factory(*, channels: int = 3, image_size: int = 28) -> nn.Module:
        return Net(1)

    with pytest.raises(RuntimeError):
        check_backbone(factory, shapes=[(1, 12, 12), (3, 12, 12)])


def test_backbone_options_are_validated_like_the_cli():
    with pytest.raises(metareg.OptionError, match="unknown option 'outt'.*Did you mean 'out'"):
        check_backbone(good_backbone, options={"outt": 3})


def test_registered_names_are_resolved():
    assert check_backbone("conv4", shapes=[(1, 28, 28)], options={"hidden": 4}) == {(1, 28, 28): 4}
    with pytest.raises(metareg.ComponentNotFound):
        check_backbone("no-such-backbone")


# ------------------------------------------------------------------------------- datasets


def _arrays(classes=10, per_class=3):
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randint(0, 255, (len(labels), 1, 8, 8), dtype=torch.uint8)
    return images, labels


def test_dataset_passes_with_expected_counts():
    ds = metareg.FewShotDataset.from_arrays(*_arrays(), name="toy")
    assert check_dataset(ds, classes={"train": 6, "validation": 2, "test": 2}, min_samples_per_class=3) is ds
    with pytest.raises(AssertionError, match="train split: has 6 classes, expected 7"):
        check_dataset(ds, classes={"train": 7})
    with pytest.raises(AssertionError, match="has 3 samples, fewer than 5"):
        check_dataset(ds, min_samples_per_class=5)


def test_dataset_factory_by_callable():
    def toy(*, seed: int = 0) -> metareg.FewShotDataset:
        """seed: split seed."""
        return metareg.FewShotDataset.from_arrays(*_arrays(), name="toy", seed=seed)

    assert check_dataset(toy, options={"seed": 3}).name == "toy"


def test_dataset_overlapping_classes_are_caught():
    ds = metareg.FewShotDataset.from_arrays(*_arrays(), name="toy")
    ds.test.classes = [ds.train.classes[0], *ds.test.classes[1:]]  # bypasses FewShotDataset.check
    with pytest.raises(AssertionError, match="is in both the train and test splits"):
        check_dataset(ds)


def test_dataset_labels_that_need_images_are_caught():
    ds = metareg.FewShotDataset.from_arrays(*_arrays(), name="toy")
    store = ds.train.images

    class Peeking:  # labels computed by decoding images
        def __get__(self, obj, owner=None):
            store.gather(torch.tensor([0]))
            return obj.__dict__["_labels"]

        def __set__(self, obj, value):  # a data descriptor wins over the instance attribute
            obj.__dict__["_labels"] = value

    split = ds.train
    split.__dict__["_labels"] = split.labels
    split.__class__ = type("PeekingSplit", (type(split),), {"labels": Peeking()})
    with pytest.raises(AssertionError, match="loaded images"):
        check_dataset(ds)


def test_dataset_bad_images_are_caught():
    ds = metareg.FewShotDataset.from_arrays(*_arrays(), name="toy")
    ds.validation.images = metareg.LazyImages(len(ds.validation), lambda i: torch.zeros(1, 8, 8))  # float
    with pytest.raises(AssertionError, match="validation split: images must be uint8, got torch.float32"):
        check_dataset(ds)
    ds.validation.images = metareg.LazyImages(len(ds.validation), lambda i: torch.zeros(1, 9, 9, dtype=torch.uint8))
    with pytest.raises(AssertionError, match=r"expected \(4, 1, 8, 8\)"):
        check_dataset(ds)

    def broken(i):
        raise OSError("truncated file")

    ds.validation.images = metareg.LazyImages(len(ds.validation), broken)
    with pytest.raises(AssertionError, match="loading samples .* failed: OSError: truncated file"):
        check_dataset(ds)


def test_dataset_factory_must_return_a_fewshotdataset():
    def wrong(*, seed: int = 0):
        """seed: unused."""
        return {"train": []}

    with pytest.raises(AssertionError, match="must return a metareg.FewShotDataset, got dict"):
        check_dataset(wrong)


# ------------------------------------------------------------------------------- transforms


class Flip(metareg.Transform):
    def forward(self, x):
        return torch.where(torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)


def flip(*, channels: int = 3, image_size: int = 32) -> metareg.Transform:
    return Flip()


def _transform(forward=None, evaluate=None):
    cls = type("T", (metareg.Transform,), {k: v for k, v in (("forward", forward), ("evaluate", evaluate)) if v})

    def factory(*, channels: int = 3, image_size: int = 32) -> metareg.Transform:
        return cls()

    return factory


def test_transform_passes():
    assert isinstance(check_transform(flip, channels=1, image_size=16), Flip)


@pytest.mark.parametrize(
    "factory, message",
    [
        (_transform(forward=lambda self, x: x * random.random()), "not reproducible"),
        (_transform(forward=lambda self, x: x.double()), "changed the dtype"),
        (_transform(forward=lambda self, x: x[:, :1]), "changed the batch or channel count"),
        (_transform(evaluate=lambda self, x: x[..., :8, :8]), "differ in shape"),
        (_transform(forward=lambda self, x: x / 0), "NaN or infinite"),
        (_transform(forward=lambda self, x: x[..., : torch.randint(8, 16, ()).item(), :]), "different shapes"),
    ],
)
def test_transform_faults_are_named(factory, message):
    with pytest.raises(AssertionError, match=message):
        check_transform(factory, channels=3, image_size=16)


def test_transform_must_be_a_transform():
    def plain(*, channels: int = 3, image_size: int = 32):
        return nn.Identity()

    with pytest.raises(AssertionError, match="must return a metareg.Transform, got Identity"):
        check_transform(plain)


# ------------------------------------------------------------------------------- strategies


class Protos(metareg.Strategy):
    def __init__(self, fault: str = ""):
        super().__init__()
        self.fault = fault

    def forward(self, episodes):
        s, q = self.embed(episodes.support), self.embed(episodes.query)
        if self.fault == "reshape":  # assumes equal shots per class
            protos = s.view(s.shape[0], episodes.ways, -1, s.shape[-1]).mean(2)
        else:
            protos = metareg.class_means(s, episodes.support_labels, episodes.ways)
        logits = -torch.cdist(q, protos)
        if self.fault == "detach":
            logits = logits.detach().requires_grad_()
        if self.fault == "shape":
            logits = logits.flatten(0, 1)
        if self.fault == "nan":
            logits = logits + float("nan")
        return logits


def test_strategy_passes_and_episode_helper_is_class_major():
    check_strategy(lambda: Protos(), ways=4, shots=1, queries=2)
    eps = make_episodes(ways=3, shots=[1, 3, 2], queries=2, labelled=False)
    assert eps.support_labels[0].tolist() == [0, 1, 1, 1, 2, 2]
    assert eps.query_labels is None and eps.query.shape == (2, 6, 1, 8, 8)
    # The class of each support image shows in its brightness: the episodes are learnable.
    means = eps.support.mean((2, 3, 4))[0]
    assert means[0] < means[1] < means[4]


@pytest.mark.parametrize(
    "fault, message",
    [
        ("reshape", "uneven support counts"),
        ("detach", "gradients reached none of the backbone's"),
        ("shape", r"loss on a training episode batch failed: ValueError"),
        ("nan", "loss is not finite"),
    ],
)
def test_strategy_faults_are_named(fault, message):
    with pytest.raises(AssertionError, match=message):
        check_strategy(lambda: Protos(fault))


def test_strategy_must_subclass_strategy():
    with pytest.raises(AssertionError, match="must return a metareg.Strategy"):
        check_strategy(lambda: nn.Linear(2, 2))


def test_labelled_strategies_are_checked_through_labelled_loss():
    class Supervised(Protos):
        train_batches = "labelled"

        def setup(self, backbone, task):
            super().setup(backbone, task)
            self.head = nn.Linear(task.feature_dim, task.num_train_classes)

        def labelled_loss(self, images, labels):
            logits = self.head(self.backbone(images))
            return metareg.StepOutput(F.cross_entropy(logits, labels), logits, labels)

    check_strategy(lambda: Supervised())


def test_strategy_needing_grad_at_eval_gets_it():
    class Adapting(Protos):
        needs_grad_at_eval = True

        def forward(self, episodes):
            assert torch.is_grad_enabled(), "evaluation ran without autograd"
            return super().forward(episodes)

    check_strategy(lambda: Adapting())


# ------------------------------------------------------------------ declared test size, combinations


def test_named_components_are_built_at_their_declared_test_size():
    # conv4 declares test_options={"hidden": 8}: 8 features on 28x28, where its default 64 filters give 64.
    assert check_backbone("conv4", shapes=[(1, 28, 28)]) == {(1, 28, 28): 8}
    assert check_backbone("conv4", shapes=[(1, 28, 28)], options={}) == {(1, 28, 28): 64}


def protos(*, fault: str = "") -> metareg.Strategy:
    """Prototypes by class means.

    fault: a deliberate bug to plant (nan, detach, shape, reshape) or none.
    """
    return Protos(fault)


class _StrategyPlugin:
    @metareg.hookimpl
    def metareg_strategies(self):
        yield metareg.StrategySpec("protos", protos, summary="class means")
        yield metareg.StrategySpec("protos-nan", protos, summary="NaN logits", test_options={"fault": "nan"})


def test_check_combinations_passes_a_good_strategy_and_names_a_broken_one():
    registry = Registry(load_plugins(extra=[("kit", _StrategyPlugin())], only=["backbones", "kit"]))
    results = check_combinations("strategy", "protos", registry=registry)
    assert len(results) == 2 * len(registry.names("backbones"))
    assert all(r.status == "ok" for r in results), [str(r) for r in results]
    with pytest.raises(AssertionError, match=r"protos-nan \+ conv4 @ 1x28x28: failed \(training step: "
                                             r"the loss is not a finite scalar"):
        check_combinations("strategy", "protos-nan", registry=registry)
