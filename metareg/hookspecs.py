"""The plugin contract: four hooks, one per kind of component (:mod:`metareg.kinds`).

Every hook takes no arguments and returns (or yields) records. A plugin is a module
registered under the ``metareg`` entry-point group that implements any of these
hooks with :data:`metareg.hookimpl`. The core attributes each record to the
plugin's distribution; a name registered twice is an error that names both
distributions, and ``<entry-point>:<name>`` picks one.
"""
from __future__ import annotations

from collections.abc import Iterable

import pluggy

from metareg.records import BackboneSpec, DatasetSpec, StrategySpec, TransformSpec

PROJECT = "metareg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def metareg_backbones() -> Iterable[BackboneSpec]:
    """Register backbones (feature extractors).

    The factory is called with the dataset's ``channels`` and ``image_size`` plus the
    user's options, and returns an ``nn.Module`` mapping ``(N, C, H, W)`` floats to
    ``(N, D)`` features, with an ``out_features`` attribute equal to ``D``. Every other
    keyword argument needs a default and a type annotation: they become the
    backbone's options in ``metareg info`` and ``--backbone-opt``. The module keeps the
    :class:`metareg.Backbone` protocol (optional ``pretrained_on`` and epoch hook,
    ``metareg/protocols.py``); :func:`metareg.pretraining_options` adds the shared
    pretrained / finetune options.

    Example::

        import metareg

        @metareg.hookimpl
        def metareg_backbones():
            yield metareg.BackboneSpec(
                "tinycnn", "my_plugin.models:tinycnn", summary="Two conv layers, 32-d features"
            )

        # my_plugin/models.py
        from torch import nn

        def tinycnn(*, channels: int = 3, image_size: int = 28, width: int = 32) -> nn.Module:
            '''Two 3x3 conv layers and global average pooling.

            width: number of filters in each layer.
            '''
            net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            net.out_features = width
            return net
    """


@hookspec
def metareg_strategies() -> Iterable[StrategySpec]:
    """Register meta-learning strategies.

    The factory takes the strategy's options as keyword arguments and returns a
    :class:`metareg.Strategy`: an ``nn.Module`` that is handed the backbone once
    (``setup``) and maps a batch of episodes to query logits. It never touches
    Lightning, samplers or devices: the core does.

    Example::

        import metareg

        @metareg.hookimpl
        def metareg_strategies():
            yield metareg.StrategySpec(
                "nearestneighbour", "my_plugin.nn:NearestNeighbour", summary="1-NN on embeddings"
            )

        # my_plugin/nn.py
        import torch
        import metareg

        class NearestNeighbour(metareg.Strategy):
            def forward(self, episodes):
                s = self.embed(episodes.support)          # (B, ways*shots, D)
                q = self.embed(episodes.query)            # (B, ways*queries, D)
                d = torch.cdist(q, s)                     # (B, Q, S)
                onehot = torch.nn.functional.one_hot(episodes.support_labels, episodes.ways).float()
                return -(d.unsqueeze(-1) - 1e9 * (1 - onehot.unsqueeze(1))).amin(2)
    """


@hookspec
def metareg_datasets() -> Iterable[DatasetSpec]:
    """Register few-shot datasets.

    The factory takes the dataset's options as keyword arguments (``root``, ``seed``,
    ...) and returns a :class:`metareg.FewShotDataset`: train / validation / test
    :class:`metareg.ClassSplit` objects whose class sets are disjoint, with labels per
    sample available without loading images, and a :class:`metareg.DatasetInfo` saying how
    its images were made (``invert``, ``resample``, ``crop``, ``imagenet_derived``).

    Example::

        import metareg

        @metareg.hookimpl
        def metareg_datasets():
            yield metareg.DatasetSpec("noise", "my_plugin.data:noise", summary="Random images")

        # my_plugin/data.py
        import torch
        import metareg

        def noise(*, classes: int = 30, per_class: int = 20, seed: int = 0) -> metareg.FewShotDataset:
            '''Random 1x28x28 images; class c is brightness-shifted by c.'''
            g = torch.Generator().manual_seed(seed)
            labels = torch.arange(classes).repeat_interleave(per_class)
            images = (torch.rand(len(labels), 1, 28, 28, generator=g) * 128 + labels.view(-1, 1, 1, 1) * 4)
            return metareg.FewShotDataset.from_arrays(images.to(torch.uint8), labels, name="noise", seed=seed)
    """


@hookspec
def metareg_transforms() -> Iterable[TransformSpec]:
    """Register batched augmentation chains.

    The factory is called with the dataset's ``channels`` and ``image_size`` plus the
    user's options and returns a :class:`metareg.Transform`: ``forward`` augments a
    whole ``(N, C, H, W)`` float batch on its device (training only);
    ``evaluate`` prepares validation, test and prediction batches (by default it
    returns them unchanged).

    Example::

        import metareg

        @metareg.hookimpl
        def metareg_transforms():
            yield metareg.TransformSpec("hflip", "my_plugin.aug:hflip", summary="Random horizontal flip")

        # my_plugin/aug.py
        import torch
        import metareg

        class HFlip(metareg.Transform):
            def __init__(self, p: float):
                super().__init__()
                self.p = p

            def forward(self, x):
                flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
                return torch.where(flip, x.flip(-1), x)

        def hflip(*, channels: int = 3, image_size: int = 84, p: float = 0.5) -> metareg.Transform:
            '''p: probability of flipping each image.'''
            return HFlip(p)
    """
