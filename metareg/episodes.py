"""N-way K-shot episodes drawn as index tensors.

Per-class index tables are built once per split; a whole meta-batch of episodes is
then one ``topk`` over random keys: ``(B, ways, shots + queries)`` sample indices.
Every draw is a pure function of ``(seed, stream, numbers...)`` so training
batches, validation and test episodes are reproducible, identical across
strategies, and independent of how many processes share the work.
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

    @property
    def meta_batch_size(self) -> int:
        return self.support.shape[0]

    def to(self, device) -> EpisodeBatch:
        ql = None if self.query_labels is None else self.query_labels.to(device)
        return EpisodeBatch(
            self.support.to(device), self.support_labels.to(device), self.query.to(device), ql, self.ways
        )


class EpisodeSampler:
    """Draws ``ways``-way episodes of ``shots + queries`` samples per class from one split."""

    def __init__(self, labels: torch.Tensor, classes, *, ways: int, shots: int, queries: int, split: str):
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise DataError(f"{split}: {name} must be a positive integer, got {value!r}")
        ways, shots, queries = int(ways), int(shots), int(queries)
        if ways < 2:
            raise DataError(f"{split}: ways must be at least 2 for a classification episode, got {ways}")
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
