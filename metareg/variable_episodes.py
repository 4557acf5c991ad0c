"""Episodes of varying ways and shots, drawn as Meta-Dataset draws them (``--episodes variable``).

The procedure of Triantafillou et al. (2020), "Meta-Dataset: A Dataset of Datasets for Learning
to Learn from Few Examples", section 3.2 and appendix, "Episode sampling" (the reference code is
``meta_dataset/data/sampling.py``, read, not copied). For one episode of a split with ``C`` classes:

1. ways ``N`` uniform in ``[5, min(50, C)]``; ``N`` classes uniform without replacement;
2. queries per class ``q = min(10, floor(min over the chosen classes of n_c / 2))``: the query set
   is balanced, and every class keeps at least half of its images for the support set;
3. support budget ``|S| = min(500, sum_c ceil(beta * min(100, n_c - q)))``, ``beta ~ U(0, 1]``;
4. shots per class from class-size-weighted, noisy proportions ``R_c = n_c * exp(a_c)``,
   ``a_c ~ U[log 0.5, log 2)``: ``k_c = min(floor(R_c / sum R * (|S| - N)) + 1, n_c - q)``, so
   every class has at least one support image and support sets are class-imbalanced.

The limits (5, 50, 10, 500, 100) are Meta-Dataset's and are the defaults here. A split with fewer
than 5 classes, or a class with fewer than 2 images, cannot follow the procedure and is refused.
Sizes follow the dataset: on tiny datasets ways stop at the split's class count and shots at its
class sizes (glyphs at 20 images per class: at most 10 queries and 10 shots per class), which is
also how a 2-core CPU keeps episodes small; Meta-Dataset's own sources reach 500 support and 500
query images per episode.

A draw is a pure function of the generator it is given, like the fixed sampler's; the episodes of
a meta-batch are padded to the largest (:class:`VariableDraw`, :class:`VariableEpisodes`) and
reach strategies as one masked :class:`metareg.EpisodeBatch`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metareg.episodes import PAD_LABEL, EpisodeBatch
from metareg.errors import DataError

MIN_WAYS, MAX_WAYS = 5, 50
MAX_QUERIES = 10
MAX_SUPPORT, MAX_SUPPORT_PER_CLASS = 500, 100
LOG_WEIGHTS = (math.log(0.5), math.log(2.0))


@dataclass
class VariableDraw:
    """Sample indices of ``B`` variable episodes, padded: ``index (B, S + Q)`` (support slots first),
    ``support_labels (B, S)`` and ``query_labels (B, Q)`` with :data:`~metareg.episodes.PAD_LABEL` at
    padded slots (whose index points at sample 0), and ``ways (B,)``."""

    index: torch.Tensor
    support_labels: torch.Tensor
    query_labels: torch.Tensor
    ways: torch.Tensor

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, rows) -> VariableDraw:
        """Episodes ``rows`` (a tensor of episode numbers), padded to the largest of them (a pool of tasks,
        ``num_tasks``, is padded to its largest task; a batch drawn from it need not be)."""
        support, query = self.support_labels[rows], self.query_labels[rows]
        s, q = int((support != PAD_LABEL).sum(1).max()), int((query != PAD_LABEL).sum(1).max())
        index = torch.cat([self.index[rows][:, :s], self.index[rows][:, support.shape[1]:][:, :q]], 1)
        return VariableDraw(index, support[:, :s], query[:, :q], self.ways[rows])

    @classmethod
    def concat(cls, draws: list[VariableDraw]) -> VariableDraw:
        """Draws joined along the episode axis, padded to the largest."""
        s = max(d.support_labels.shape[1] for d in draws)
        q = max(d.query_labels.shape[1] for d in draws)

        def widen(t, width, fill):
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

        return cls(
            torch.cat([torch.cat([widen(d.index[:, :d.support_labels.shape[1]], s, 0),
                                  widen(d.index[:, d.support_labels.shape[1]:], q, 0)], 1) for d in draws]),
            torch.cat([widen(d.support_labels, s, PAD_LABEL) for d in draws]),
            torch.cat([widen(d.query_labels, q, PAD_LABEL) for d in draws]),
            torch.cat([d.ways for d in draws]),
        )


@dataclass
class VariableEpisodes:
    """What the datamodule ships for a batch of variable episodes: uint8 images ``(B, S + Q, C, H, W)``
    as drawn (support slots first, padded slots included), their padded labels and ways per episode,
    and (fixed evaluation episodes) their ids. :meth:`prepared` makes the masked :class:`EpisodeBatch`."""

    images: torch.Tensor
    support_labels: torch.Tensor
    query_labels: torch.Tensor
    ways: torch.Tensor
    episode_ids: torch.Tensor | None = None

    def __post_init__(self):
        b, n = self.images.shape[:2]
        s, q = self.support_labels.shape[1], self.query_labels.shape[1]
        if self.images.dim() != 5 or n != s + q or self.query_labels.shape[0] != b or self.ways.shape != (b,) \
                or self.support_labels.shape[0] != b:
            raise ValueError(f"variable episodes: images {tuple(self.images.shape)} do not match support labels "
                             f"{tuple(self.support_labels.shape)}, query labels {tuple(self.query_labels.shape)} "
                             f"and ways {tuple(self.ways.shape)}")

    def to(self, device) -> VariableEpisodes:
        ids = None if self.episode_ids is None else self.episode_ids.to(device)
        return VariableEpisodes(self.images.to(device), self.support_labels.to(device),
                                self.query_labels.to(device), self.ways.to(device), ids)

    def prepared(self, transform=None) -> EpisodeBatch:
        """Floats in ``[0, 1]``; ``transform`` runs once over the real images only; padded images are zeros."""
        s = self.support_labels.shape[1]
        labels = torch.cat([self.support_labels, self.query_labels], 1)
        real = labels != PAD_LABEL
        images = self.images[real].float().div_(255)
        if transform is not None:
            images = transform(images)
        full = images.new_zeros(*self.images.shape[:2], *images.shape[1:])
        full[real] = images
        ways = int(self.ways.max())
        way_mask = torch.arange(ways, device=self.ways.device).unsqueeze(0) < self.ways.unsqueeze(1)
        return EpisodeBatch(full[:, :s], self.support_labels, full[:, s:], self.query_labels, ways, self.episode_ids,
                            support_mask=real[:, :s], query_mask=real[:, s:], way_mask=way_mask)


class VariableEpisodeSampler:
    """Draws Meta-Dataset episodes (see the module docstring) from one split."""

    def __init__(self, labels: torch.Tensor, classes, *, split: str, min_ways: int = MIN_WAYS,
                 max_ways: int = MAX_WAYS, max_queries: int = MAX_QUERIES, max_support: int = MAX_SUPPORT,
                 max_support_per_class: int = MAX_SUPPORT_PER_CLASS, log_weights: tuple[float, float] = LOG_WEIGHTS):
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.counts = torch.bincount(labels, minlength=len(classes))
        self.split, self.num_classes = split, len(classes)
        if self.num_classes < min_ways:
            raise DataError(f"{split} split has {self.num_classes} classes but variable (Meta-Dataset) episodes "
                            f"have at least {min_ways} ways; use a dataset with {min_ways} or more {split} classes, "
                            "or --episodes fixed")
        if len(self.counts) and int(self.counts.min()) < 2:
            c = int(self.counts.argmin())
            raise DataError(f"{split} split: class {classes[c]!r} has {int(self.counts[c])} samples but variable "
                            "episodes need at least 2 per class (one support, one query); remove the class or "
                            "use --episodes fixed")
        self.min_ways, self.max_ways = min_ways, min(max_ways, self.num_classes)
        self.max_queries, self.max_support, self.max_per_class = max_queries, max_support, max_support_per_class
        self.log_weights = log_weights
        # (C, max_count) table of sample indices, padded, as the fixed sampler keeps it.
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(self.counts, 0) - self.counts
        slots = torch.arange(int(self.counts.max()))
        self.table = order[(starts.unsqueeze(1) + slots).clamp(max=max(len(labels) - 1, 0))]
        self.valid = slots.unsqueeze(0) < self.counts.unsqueeze(1)

    def episode(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One episode: support indices and labels (class-major), query indices and labels."""
        ways = int(torch.randint(self.min_ways, self.max_ways + 1, (1,), generator=gen))
        cls = torch.randperm(self.num_classes, generator=gen)[:ways]
        n = self.counts[cls]
        queries = min(self.max_queries, int(n.min()) // 2)
        remaining = n - queries
        beta = 1.0 - float(torch.rand((), generator=gen, dtype=torch.float64))  # in (0, 1]
        contribution = remaining.clamp(max=self.max_per_class).double()
        budget = min(self.max_support, int(torch.ceil(beta * contribution).sum()))
        low, high = self.log_weights
        weight = n.double() * torch.exp(low + (high - low) * torch.rand(ways, generator=gen, dtype=torch.float64))
        shots = torch.minimum(torch.floor(weight / weight.sum() * (budget - ways)).long() + 1, remaining)
        # A random order of each chosen class's samples: the first k_c are its support, the next q its query.
        keys = torch.rand(ways, self.table.shape[1], generator=gen).masked_fill_(~self.valid[cls], 2.0)
        samples = self.table[cls].gather(1, keys.argsort(1))
        slot = torch.arange(samples.shape[1]).unsqueeze(0)
        support = slot < shots.unsqueeze(1)
        query = ~support & (slot < (shots + queries).unsqueeze(1))
        label = torch.arange(ways).unsqueeze(1).expand_as(samples)
        return samples[support], label[support], samples[query], label[query]

    def sample(self, count: int, gen: torch.Generator) -> VariableDraw:
        """``count`` episodes, one after the other from ``gen``, padded into one :class:`VariableDraw`."""
        drawn = [self.episode(gen) for _ in range(count)]
        s = max(len(d[0]) for d in drawn)
        q = max(len(d[2]) for d in drawn)

        def pad(t, width, fill):
            return torch.nn.functional.pad(t, (0, width - len(t)), value=fill)

        return VariableDraw(
            torch.stack([torch.cat([pad(si, s, 0), pad(qi, q, 0)]) for si, _, qi, _ in drawn]),
            torch.stack([pad(sl, s, PAD_LABEL) for _, sl, _, _ in drawn]),
            torch.stack([pad(ql, q, PAD_LABEL) for _, _, _, ql in drawn]),
            torch.tensor([int(d[1].max()) + 1 for d in drawn]),
        )

    @staticmethod
    def concat(draws: list[VariableDraw]) -> VariableDraw:
        return VariableDraw.concat(draws)

    def batch(self, images, draw: VariableDraw, episode_ids: torch.Tensor | None = None) -> VariableEpisodes:
        """The record the datamodule ships: the images of ``draw`` from an ``ImageStore``."""
        return VariableEpisodes(images.gather(draw.index), draw.support_labels, draw.query_labels, draw.ways,
                                episode_ids)
