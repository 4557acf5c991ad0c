"""N-way K-shot episodes drawn as index tensors.

Per-class index tables are built once per split; a whole meta-batch of episodes is
then one ``topk`` over random keys: ``(B, ways, shots + queries)`` sample indices.
Every draw is a pure function of ``(seed, stream, numbers...)`` so training
batches, validation and test episodes are reproducible, identical across
strategies, and independent of how many processes share the work.

The sampler's :class:`EpisodeGeometry` travels with each batch it draws
(:class:`SampledEpisodes`); :meth:`EpisodeBatch.from_uint8` is the one place where
support is split from query and labels are made.

Episodes of varying ways and shots (``--episodes variable``, :mod:`metareg.variable_episodes`)
travel as one padded :class:`EpisodeBatch` with masks: strategies compute on the whole
meta-batch at once and the masks keep padding out of every statistic, loss and accuracy.
"""
from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


#: Label of a padded support or query slot: cross-entropy's default ``ignore_index``.
PAD_LABEL = -100


@dataclass
class EpisodeBatch:
    """A batch of ``B`` episodes, images already on the device as floats.

    Support and query are class-major: ``support_labels[b] == [0]*shots + [1]*shots + ...``
    for sampled episodes. Prediction builds batches with uneven support counts, so
    strategies should derive class statistics from the labels (see
    :func:`metareg.strategy.class_means`), not from reshapes.

    Padded batches (episodes of different ways and shots, :meth:`pad`) carry three masks, True
    for what is real: ``support_mask (B, S)``, ``query_mask (B, Q)`` and ``way_mask (B, ways)``,
    where ``ways`` is the largest episode's. Padded slots hold zero images and the label
    :data:`PAD_LABEL`; a padded way has no support and no query. A strategy that accepts them
    (its record provides ``"episodes:variable"``) keeps padding out of its statistics
    (:meth:`support_onehot`, the masks) and gives padded ways the logit ``-inf``
    (:meth:`mask_ways`); the core's loss and accuracy read the masks themselves.
    """

    support: torch.Tensor  # (B, S, C, H, W)
    support_labels: torch.Tensor  # (B, S) in [0, ways)
    query: torch.Tensor  # (B, Q, C, H, W)
    query_labels: torch.Tensor | None  # (B, Q), None when predicting
    ways: int
    #: Which fixed evaluation episodes these are, ``(B,)``; None for training and prediction
    #: batches. The core's bookkeeping: strategies need not look at it.
    episode_ids: torch.Tensor | None = None
    support_mask: torch.Tensor | None = None  # (B, S) bool, padded batches only
    query_mask: torch.Tensor | None = None  # (B, Q) bool
    way_mask: torch.Tensor | None = None  # (B, ways) bool

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
        masks = (self.support_mask, self.query_mask, self.way_mask)
        if any(m is not None for m in masks):
            expected = ((b, s), tuple(self.query.shape[:2]), (b, self.ways))
            for name, mask, shape in zip(("support_mask", "query_mask", "way_mask"), masks, expected, strict=True):
                if mask is None or mask.dtype != torch.bool or tuple(mask.shape) != shape:
                    got = "none" if mask is None else f"{mask.dtype} {tuple(mask.shape)}"
                    problems.append(f"{name} {got}, expected bool {shape} (a padded batch has all three masks)")
        if problems:
            raise ValueError("EpisodeBatch shapes disagree: " + "; ".join(problems))

    @property
    def meta_batch_size(self) -> int:
        return self.support.shape[0]

    @property
    def padded(self) -> bool:
        """True for a padded batch of episodes of different ways and shots (it carries masks)."""
        return self.way_mask is not None

    # ------------------------------------------------------------------ padding-aware helpers
    # One spelling of each masked statistic, so that every strategy and the core agree on what
    # padding means; on an unpadded batch each is the plain computation.

    def support_onehot(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(B, S, ways)`` one-hot support labels; rows of padded support slots are all zero."""
        if not self.padded:
            return F.one_hot(self.support_labels, self.ways).to(dtype)
        onehot = F.one_hot(self.support_labels.clamp(min=0), self.ways).to(dtype)
        return onehot * self.support_mask.unsqueeze(-1).to(dtype)

    def mask_ways(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, N, ways)`` logits with padded ways at ``-inf``, so that they never win and take no
        probability; unchanged on an unpadded batch."""
        if not self.padded:
            return logits
        return logits.masked_fill(~self.way_mask.unsqueeze(1), float("-inf"))

    def query_loss(self, logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy of ``(B, Q, ways)`` query logits: the mean over episodes of each episode's
        mean over its real queries, so that an episode weighs the same whatever its query count.

        On a padded batch, label smoothing spreads over each episode's real ways only (``-inf``
        logits of padded ways would make a smoothed ``F.cross_entropy`` infinite).
        """
        logits = logits.float()
        if not self.padded:
            return F.cross_entropy(logits.flatten(0, 1), self.query_labels.flatten(), label_smoothing=label_smoothing)
        return masked_cross_entropy(logits, self.query_labels, self.query_mask, self.way_mask, label_smoothing)

    def query_accuracy(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B,)`` accuracy of each episode over its real queries."""
        correct = (logits.argmax(-1) == self.query_labels).float()
        if not self.padded:
            return correct.mean(1)
        mask = self.query_mask.float()
        return (correct * mask).sum(1) / mask.sum(1).clamp(min=1)

    @classmethod
    def pad(cls, episodes: list[EpisodeBatch]) -> EpisodeBatch:
        """One padded batch of single episodes (each a batch of one, of any ways and shots).

        Every support and query set is padded at its end to the largest; labels keep their values.
        """
        if not episodes or any(e.meta_batch_size != 1 for e in episodes):
            raise ValueError("EpisodeBatch.pad takes a non-empty list of one-episode batches")
        ways = max(e.ways for e in episodes)
        s = max(e.support.shape[1] for e in episodes)
        q = max(e.query.shape[1] for e in episodes)

        def stack(tensors, width, fill):
            return torch.cat([F.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=fill)
                              for t in tensors])

        def real(lengths, width):
            return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)

        labelled = all(e.query_labels is not None for e in episodes)
        ids = [e.episode_ids for e in episodes]
        return cls(
            stack([e.support for e in episodes], s, 0.0),
            stack([_labels_of(e.support_labels, e.support_mask) for e in episodes], s, PAD_LABEL),
            stack([e.query for e in episodes], q, 0.0),
            stack([_labels_of(e.query_labels, e.query_mask) for e in episodes], q, PAD_LABEL) if labelled else None,
            ways,
            torch.cat(ids) if all(i is not None for i in ids) else None,
            support_mask=real([_count(e.support_mask, e.support.shape[1]) for e in episodes], s),
            query_mask=real([_count(e.query_mask, e.query.shape[1]) for e in episodes], q),
            way_mask=real([_count(e.way_mask, e.ways) for e in episodes], ways),
        )

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
                            move(self.query_labels), self.ways, move(self.episode_ids), move(self.support_mask),
                            move(self.query_mask), move(self.way_mask))


def _labels_of(labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return labels if mask is None else labels.masked_fill(~mask, PAD_LABEL)


def _count(mask: torch.Tensor | None, width: int) -> int:
    # Padding is always at the end, so a one-episode mask is a length.
    return width if mask is None else int(mask.sum())


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, query_mask: torch.Tensor,
                         way_mask: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over episodes of the per-episode mean cross-entropy of ``(B, Q, ways)`` logits, over real
    queries and (label smoothing) real ways; padded ways' logits may be ``-inf``."""
    logp = torch.log_softmax(logits.masked_fill(~way_mask.unsqueeze(1), float("-inf")), -1)
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        # where(), not a product: 0 * -inf is NaN in the forward pass and in the gradient.
        real = torch.where(way_mask.unsqueeze(1), logp, torch.zeros_like(logp))
        uniform = -real.sum(-1) / way_mask.sum(-1, keepdim=True).to(logp.dtype)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    per_episode = torch.where(query_mask, nll, torch.zeros_like(nll)).sum(1) / query_mask.sum(1).clamp(min=1)
    return per_episode.mean()


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
    support_mask: torch.Tensor | None = None  # (B, S) bool, padded batches only
    query_mask: torch.Tensor | None = None  # (B, Q) bool
    way_mask: torch.Tensor | None = None  # (B, ways) bool

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
            flags = ("--shots/--queries" if split == "train" else
                     "--test-shots/--test-queries (validation and test episodes take 15 queries per class unless "
                     "--test-queries says otherwise)")
            raise DataError(
                f"{split} split: class {classes[c]!r} has {int(counts[c])} samples but episodes need "
                f"shots + queries = {shots} + {queries} = {need}; lower {flags} to at most {int(counts.min())} "
                "in total"
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

    # The datamodule's two calls, shared with the variable sampler (metareg.variable_episodes), so that
    # it draws either kind of episode the same way.
    @staticmethod
    def concat(draws: list[torch.Tensor]) -> torch.Tensor:
        """Draws of :meth:`sample` joined along the episode axis."""
        return torch.cat(draws)

    def batch(self, images, index: torch.Tensor, episode_ids: torch.Tensor | None = None) -> SampledEpisodes:
        """The record the datamodule ships: images of ``index`` from an ``ImageStore``, with this geometry."""
        return SampledEpisodes(images.gather(index), self.geometry, episode_ids)


def episode_labels(count: int, ways: int, per_class: int, device=None) -> torch.Tensor:
    """Class-major labels ``(count, ways * per_class)``: 0,0,..,1,1,.."""
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(count, -1)


def split_episodes(images: torch.Tensor, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, ways, n, C, H, W)`` -> support ``(B, ways*shots, ...)`` and query ``(B, ways*(n-shots), ...)``."""
    return images[:, :, :shots].flatten(1, 2), images[:, :, shots:].flatten(1, 2)
