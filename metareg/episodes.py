"""N-way K-shot episodes drawn as index tensors.

Per-class index tables are built once per split; a whole meta-batch of episodes is
then one ``topk`` over random keys: ``(B, ways, shots + queries)`` sample indices.
Every draw is a pure function of ``(seed, stream, numbers...)`` so training
batches, validation and test episodes are reproducible, identical across
strategies, and independent of how many processes share the work.

The sampler's :class:`EpisodeGeometry` travels with each batch it draws
(:class:`SampledEpisodes`); :meth:`EpisodeBatch.from_uint8` is the one place where
support is split from query and labels are made.
"""
from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass

import torch

from metareg.errors import DataError


def stream_seed(*parts) -> int:
    """A stable 63-bit seed from any tuple of numbers and strings."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(*parts))


def _geometry_problem(ways, shots, queries) -> str | None:
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            return f"{name} must be a positive integer, got {value!r}"
    if ways < 2:
        return f"ways must be at least 2 for a classification episode, got {ways}"
    return None


@dataclass(frozen=True)
class EpisodeGeometry:
    """The shape of an N-way episode: ``ways`` classes, ``shots`` support and ``queries`` query
    images per class. The sampler that draws episodes owns it and ships it with every batch, so
    whoever splits support from query reads it from the batch, never from the run's settings."""

    ways: int
    shots: int
    queries: int

    def __post_init__(self):
        problem = _geometry_problem(self.ways, self.shots, self.queries)
        if problem is not None:
            raise DataError(f"episode geometry: {problem}")
        for name in ("ways", "shots", "queries"):
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy integers -> int

    @property
    def per_class(self) -> int:
        return self.shots + self.queries

    def __str__(self) -> str:
        return f"{self.ways}-way {self.shots}-shot {self.queries}-query"


@dataclass
class EpisodeBatch:
    """A batch of ``B`` episodes, images already on the device as floats.

    Support and query are class-major: ``support_labels[b] == [0]*shots + [1]*shots + ...``
    for sampled episodes. Prediction builds batches with uneven support counts, so
    strategies should derive class statistics from the labels (see
    :func:`metareg.strategy.class_means`), not from reshapes.
    """

    support: torch.Tensor  # (B, S, C, H, W)
    support_labels: torch.Tensor  # (B, S) in [0, ways)
    query: torch.Tensor  # (B, Q, C, H, W)
    query_labels: torch.Tensor | None  # (B, Q), None when predicting
    ways: int
    #: Which fixed evaluation episodes these are, ``(B,)``; None for training and prediction
    #: batches. The core's bookkeeping: strategies need not look at it.
    episode_ids: torch.Tensor | None = None

    def __post_init__(self):
        # Shapes only (no device sync): a support/query split that disagrees with its labels would
        # otherwise train on silently mislabelled images.
        b, s = self.support.shape[:2]
        problems = []
        if tuple(self.support_labels.shape) != (b, s):
            problems.append(f"support_labels {tuple(self.support_labels.shape)} for support "
                            f"{tuple(self.support.shape)}")
        if self.query.shape[0] != b:
            problems.append(f"query {tuple(self.query.shape)} for {b} episodes of support")
        if self.query_labels is not None and tuple(self.query_labels.shape) != tuple(self.query.shape[:2]):
            problems.append(f"query_labels {tuple(self.query_labels.shape)} for query {tuple(self.query.shape)}")
        if self.episode_ids is not None and tuple(self.episode_ids.shape) != (b,):
            problems.append(f"episode_ids {tuple(self.episode_ids.shape)} for {b} episodes")
        if problems:
            raise ValueError("EpisodeBatch shapes disagree: " + "; ".join(problems))

    @property
    def meta_batch_size(self) -> int:
        return self.support.shape[0]

    @classmethod
    def from_uint8(cls, images: torch.Tensor, geometry: EpisodeGeometry, transform=None,
                   episode_ids: torch.Tensor | None = None) -> EpisodeBatch:
        """Episodes from ``(B, ways, shots + queries, C, H, W)`` uint8 images as the sampler draws them.

        Images become floats in ``[0, 1]``; ``transform``, if given, runs once over all of the
        batch's images (``(B * ways * n, C, H, W)``) before support and query are split by
        ``geometry`` and labelled class-major: the one place where that split is made.
        """
        _check_images(images, geometry)
        b, ways, n = images.shape[:3]
        flat = images.float().div_(255).flatten(0, 2)
        if transform is not None:
            flat = transform(flat)
        images = flat.view(b, ways, n, *flat.shape[1:])
        support, query = split_episodes(images, geometry.shots)
        return cls(support, episode_labels(b, ways, geometry.shots, images.device), query,
                   episode_labels(b, ways, geometry.queries, images.device), ways, episode_ids)

    def to(self, device) -> EpisodeBatch:
        def move(t):
            return None if t is None else t.to(device)

        return EpisodeBatch(self.support.to(device), self.support_labels.to(device), self.query.to(device),
                            move(self.query_labels), self.ways, move(self.episode_ids))


def _check_images(images: torch.Tensor, geometry: EpisodeGeometry) -> None:
    if images.dim() != 6 or tuple(images.shape[1:3]) != (geometry.ways, geometry.per_class):
        raise ValueError(f"episode images of shape {tuple(images.shape)} do not match their {geometry} "
                         f"geometry: expected (B, {geometry.ways}, {geometry.per_class}, C, H, W)")


@dataclass
class SampledEpisodes:
    """What the datamodule ships for a batch of episodes: uint8 images ``(B, ways, shots + queries,
    C, H, W)`` as drawn, the geometry they were drawn with, and (fixed evaluation episodes) their ids.

    Images stay uint8 on the way to the device (a quarter of the bytes); :meth:`prepared` then
    makes the :class:`EpisodeBatch` strategies receive.
    """

    images: torch.Tensor
    geometry: EpisodeGeometry
    episode_ids: torch.Tensor | None = None

    def __post_init__(self):
        _check_images(self.images, self.geometry)
        if self.episode_ids is not None and tuple(self.episode_ids.shape) != (self.images.shape[0],):
            raise ValueError(f"{len(self.episode_ids)} episode ids for {self.images.shape[0]} episodes")

    def to(self, device) -> SampledEpisodes:
        ids = None if self.episode_ids is None else self.episode_ids.to(device)
        return SampledEpisodes(self.images.to(device), self.geometry, ids)

    def prepared(self, transform=None) -> EpisodeBatch:
        return EpisodeBatch.from_uint8(self.images, self.geometry, transform, self.episode_ids)


class EpisodeSampler:
    """Draws ``ways``-way episodes of ``shots + queries`` samples per class from one split."""

    def __init__(self, labels: torch.Tensor, classes, *, ways: int, shots: int, queries: int, split: str):
        problem = _geometry_problem(ways, shots, queries)
        if problem is not None:
            raise DataError(f"{split}: {problem}")
        self.geometry = EpisodeGeometry(ways, shots, queries)
        ways, shots, queries = self.geometry.ways, self.geometry.shots, self.geometry.queries
        self.ways, self.shots, self.queries, self.split = ways, shots, queries, split
        labels = torch.as_tensor(labels, dtype=torch.long)
        counts = torch.bincount(labels, minlength=len(classes))
        if ways > len(classes):
            raise DataError(
                f"{split} split has {len(classes)} classes but {ways}-way episodes need at least {ways}; "
                f"lower --ways/--test-ways or use a dataset with more {split} classes"
            )
        need = shots + queries
        small = torch.nonzero(counts < need).flatten()
        if len(small):
            c = int(small[0])
            raise DataError(
                f"{split} split: class {classes[c]!r} has {int(counts[c])} samples but episodes need "
                f"shots + queries = {shots} + {queries} = {need}; lower --shots/--queries "
                f"(or --test-shots/--test-queries) to at most {int(counts.min())} in total"
            )
        # (C, max_count) table of sample indices, padded; `counts` masks the padding.
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        slots = torch.arange(width)
        gather = (starts.unsqueeze(1) + slots).clamp(max=max(len(labels) - 1, 0))
        self.table = order[gather]
        self.valid = slots.unsqueeze(0) < counts.unsqueeze(1)
        self.num_classes = len(classes)
        self._flat_table = self.table.reshape(-1)
        self._padded = not bool(self.valid.all())  # equal class sizes (Omniglot) need no masking

    def sample(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``(count, ways, shots + queries)`` sample indices; per class, supports come first."""
        n = self.shots + self.queries
        width = self.table.shape[1]
        class_keys = torch.rand(count, self.num_classes, generator=gen)
        cls = class_keys.topk(self.ways, dim=1, largest=False).indices  # (count, ways)
        keys = torch.rand(count, self.ways, width, generator=gen)
        if self._padded:
            keys.masked_fill_(~self.valid[cls], 2.0)  # padding never wins
        pick = keys.topk(n, dim=2, largest=False).indices  # (count, ways, n)
        # one flat lookup, table[cls, pick], instead of an index followed by a gather
        return torch.take(self._flat_table, torch.add(pick, cls.unsqueeze(-1), alpha=width))


def episode_labels(count: int, ways: int, per_class: int, device=None) -> torch.Tensor:
    """Class-major labels ``(count, ways * per_class)``: 0,0,..,1,1,.."""
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(count, -1)


def split_episodes(images: torch.Tensor, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, ways, n, C, H, W)`` -> support ``(B, ways*shots, ...)`` and query ``(B, ways*(n-shots), ...)``."""
    return images[:, :, :shots].flatten(1, 2), images[:, :, shots:].flatten(1, 2)
