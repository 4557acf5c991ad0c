"""The LightningDataModule: episodes of each split as index draws, gathered into uint8 batches.

Every batch is a pure function of (seed, split, epoch, index), so:
- training batch ``i`` of epoch ``e`` is the same however many processes share the
  epoch (Lightning's distributed sampler hands ranks disjoint indices ``i``);
- validation and test episodes are fixed by the seed: episode ``j`` is the same for
  every strategy, run and world size, so accuracies compare episode by episode.
Images stay uint8 until the Lightning module moves them to the device. Each batch is a record
that carries what it is: :class:`~metareg.episodes.SampledEpisodes` (with the geometry of the
sampler that drew them) or :class:`LabelledImages`, per the strategy's :class:`TrainBatches`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from metareg.config import RunConfig
from metareg.episodes import EpisodeSampler, SampledEpisodes, generator
from metareg.errors import ConfigError, DataError
from metareg.evaluation import SOURCE_STRIDE
from metareg.splits import ClassSplit, FewShotDataset
from metareg.strategy import TrainBatches


@dataclass
class LabelledImages:
    """A plain training batch: images ``(N, C, H, W)`` (uint8 as drawn, floats once prepared) and
    their training-class labels ``(N,)``, for strategies with ``TrainBatches.LABELLED``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dim() != 4 or tuple(self.labels.shape) != (self.images.shape[0],):
            raise ValueError(f"labelled batch: {tuple(self.labels.shape)} labels for images "
                             f"{tuple(self.images.shape)}; expected (N,) labels for (N, C, H, W) images")

    def to(self, device) -> LabelledImages:
        return LabelledImages(self.images.to(device), self.labels.to(device))

    def prepared(self, transform=None) -> LabelledImages:
        images = self.images.float().div_(255)
        return LabelledImages(images if transform is None else transform(images), self.labels)


class TrainEpisodes(Dataset):
    """Item ``i``: meta-batch ``i`` of the current epoch, ``(B, ways, shots+queries, C, H, W)`` uint8."""

    def __init__(self, split: ClassSplit, sampler: EpisodeSampler, *, length: int, batch: int, seed: int,
                 num_tasks: int):
        self.split, self.sampler, self.length, self.batch, self.seed = split, sampler, length, batch, seed
        self.epoch = 0
        # A fixed pool of tasks (Flash's num_tasks); -1 means a fresh task every draw.
        self.pool = sampler.sample(num_tasks, generator(seed, "task-pool")) if num_tasks > 0 else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> SampledEpisodes:
        gen = generator(self.seed, "train", self.epoch, i)
        if self.pool is None:
            index = self.sampler.sample(self.batch, gen)
        else:
            index = self.pool[torch.randint(len(self.pool), (self.batch,), generator=gen)]
        return self.sampler.batch(self.split.images, index)  # SampledEpisodes, or VariableEpisodes


class LabelledBatches(Dataset):
    """Item ``i``: a plain batch of training images with their training-class labels."""

    def __init__(self, split: ClassSplit, *, length: int, batch: int, seed: int):
        self.split, self.length, self.batch, self.seed = split, length, batch, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> LabelledImages:
        gen = generator(self.seed, "labelled", self.epoch, i)
        index = torch.randint(len(self.split), (self.batch,), generator=gen)
        return LabelledImages(self.split.images.gather(index), self.split.labels[index])


class FixedEpisodes(Dataset):
    """Item ``k``: episodes ``k*B .. k*B+B-1`` of a fixed, seeded list; carries their ids."""

    def __init__(self, split: ClassSplit, sampler: EpisodeSampler, *, count: int, batch: int, seed: int, stream: str,
                 id_offset: int = 0):
        self.split, self.sampler, self.count, self.batch = split, sampler, count, batch
        self.seed, self.stream, self.id_offset = seed, stream, id_offset  # offset: source s of several, s*STRIDE

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def __getitem__(self, k: int) -> SampledEpisodes:
        ids = torch.arange(k * self.batch, min((k + 1) * self.batch, self.count))
        # One generator per episode: episode j never depends on batching or world size.
        index = self.sampler.concat([self.sampler.sample(1, generator(self.seed, self.stream, int(j))) for j in ids])
        return self.sampler.batch(self.split.images, index, ids + self.id_offset)


def _unbatch(items):
    (item,) = items  # each dataset item is already a whole batch
    return item


class EpisodeDataModule(pl.LightningDataModule):
    """The LightningDataModule of every metareg run; build it with :func:`metareg.prepare`.

    Training batches are drawn afresh each epoch from the training classes; validation and
    test episodes are fixed by the seed, from classes never trained on. Call :meth:`check`
    (``prepare`` does) before handing it to a ``Trainer``; see docs/lightning.md.
    """

    def __init__(self, dataset: FewShotDataset, config: RunConfig, *,
                 train_batches: TrainBatches = TrainBatches.EPISODES):
        super().__init__()
        self.dataset, self.config, self.train_batches = dataset, config, TrainBatches(train_batches)
        self.train_sampler: EpisodeSampler | None = None
        self.eval_samplers: dict[str, EpisodeSampler] = {}
        self.train_set: Dataset | None = None
        # Several sources (a metareg.source_mixing.MultiSourceDataset): each is checked and sampled on its own.
        self.sources = tuple(getattr(dataset, "sources", ()))
        self.source_samplers: dict[str, list[EpisodeSampler]] = {}

    @property
    def source_names(self) -> tuple[str, ...]:
        """The names of the run's sources when it has several (episode ids and results are per source)."""
        return tuple(s.name for s in self.sources)

    def check(self, splits=("train", "validation", "test")) -> None:
        """Validate the splits against their episode shapes; call before any training."""
        data = self.dataset
        for part in [s.dataset for s in self.sources] or [data]:
            for name in splits:
                if len(part.split(name)) == 0:
                    # e.g. imagefolder ratios=1,0,0, which gives every class to training (for `export --backbone`).
                    raise DataError(f"dataset {part.name!r}: the {name} split has no images; a run validates and "
                                    f"tests on classes it never trains on: choose dataset options that leave classes "
                                    f"to {name}")
        if self.sources:
            self._check_sources(splits)
            return
        if "train" in splits and self.train_batches is TrainBatches.EPISODES:
            self.train_sampler = self._sampler(data.train, "train")
        self.eval_samplers.update({name: self._sampler(data.split(name), name) for name in splits if name != "train"})

    def _check_sources(self, splits) -> None:
        for name in [n for n in splits if n != "train" or self.train_batches is TrainBatches.EPISODES]:
            samplers = []
            for source in self.sources:
                try:
                    samplers.append(self._sampler(source.dataset.split(name), name))
                except DataError as exc:
                    raise DataError(f"source {source.name!r}: {exc}") from None
            self.source_samplers[name] = samplers

    def _sampler(self, split: ClassSplit, name: str):
        """The sampler of one split: the run's fixed N-way K-shot shape (training's, or evaluation's), or
        Meta-Dataset's variable episodes in training and evaluation alike (each source its own: ways up to its
        classes)."""
        c = self.config
        if c.episodes == "variable":
            from metareg.variable_episodes import VariableEpisodeSampler

            return VariableEpisodeSampler(split.labels, split.classes, split=name)
        ways, shots, queries = ((c.ways, c.shots, c.queries) if name == "train" else
                                (c.eval_ways, c.eval_shots, c.eval_queries))
        return EpisodeSampler(split.labels, split.classes, ways=ways, shots=shots, queries=queries, split=name)

    def check_world_size(self, world_size: int) -> None:
        if self.config.epoch_length % world_size:
            raise ConfigError(
                f"epoch_length {self.config.epoch_length} is not divisible by the world size {world_size} "
                f"(devices x nodes); use a multiple of {world_size} so every process runs the same number of steps"
            )

    def setup(self, stage: str | None = None) -> None:
        c = self.config
        if self.train_set is None and stage in ("fit", None) and self.sources:
            from metareg.source_mixing import MixedLabelledBatches, MixedTrainEpisodes

            if self.train_batches is TrainBatches.LABELLED:
                per_step = c.meta_batch_size * c.ways * (c.shots + c.queries)
                self.train_set = MixedLabelledBatches(self.sources, length=c.epoch_length, batch=per_step, seed=c.seed)
            else:
                self.train_set = MixedTrainEpisodes(self.sources, self.source_samplers["train"],
                                                    length=c.epoch_length, batch=c.meta_batch_size, seed=c.seed,
                                                    num_tasks=c.num_tasks)
        if self.train_set is None and stage in ("fit", None):  # evaluation alone needs no training draws
            if self.train_batches is TrainBatches.LABELLED:
                per_step = c.meta_batch_size * c.ways * (c.shots + c.queries)
                self.train_set = LabelledBatches(self.dataset.train, length=c.epoch_length, batch=per_step, seed=c.seed)
            else:
                self.train_set = TrainEpisodes(self.dataset.train, self.train_sampler, length=c.epoch_length,
                                               batch=c.meta_batch_size, seed=c.seed, num_tasks=c.num_tasks)

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_unbatch, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def _fixed(self, split: str, count: int) -> Dataset:
        c = self.config
        if not self.sources:
            return FixedEpisodes(self.dataset.split(split), self.eval_samplers[split], count=count,
                                 batch=c.eval_meta_batch_size, seed=c.seed, stream=split)
        # Each source's episode j is the episode j a run on that dataset alone draws (same stream), under an
        # id of its own; a batch never mixes sources, so results are per source.
        return ConcatDataset([
            FixedEpisodes(source.dataset.split(split), sampler, count=count, batch=c.eval_meta_batch_size, seed=c.seed,
                          stream=split, id_offset=s * SOURCE_STRIDE)
            for s, (source, sampler) in enumerate(zip(self.sources, self.source_samplers[split], strict=True))
        ])

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._fixed("validation", self.config.val_num_tasks))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._fixed("test", self.config.test_num_tasks))

