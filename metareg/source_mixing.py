"""Several datasets as one run's data: the combined dataset and the training draws that mix its sources.

:func:`combine` makes one :class:`MultiSourceDataset` of the sources' datasets: a :class:`FewShotDataset`
like any other (its class names prefixed with their source's, its splits concatenated), so the model is
built for its image shape and every training class, and it keeps the sources themselves for the
datamodule, which draws each episode from one of them.

Each training *episode* (not each meta-batch) comes from one source, drawn by weight: a step mixes
sources as a meta-batch of Meta-Dataset episodes would, instead of alternating whole steps between
domains; with ``meta_batch_size`` 1 the two are the same. The draws are a pure function of
``(seed, stream, epoch, index)`` (:func:`metareg.episodes.generator`), as for one dataset, so DDP ranks
stay disjoint and a resumed run draws what an uninterrupted one draws.

With ``--episodes variable`` (Meta-Dataset: several sources *and* episodes of varying ways and shots)
each source draws its own :class:`~metareg.variable_episodes.VariableEpisodeSampler` episodes and a
meta-batch mixing sources is padded to its own largest episode, one masked batch as for one source.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from metareg.dataset_info import DatasetInfo
from metareg.episodes import SampledEpisodes, generator
from metareg.errors import ConfigError
from metareg.sources import JOIN
from metareg.splits import SPLITS, ClassSplit, FewShotDataset, ImageStore
from metareg.variable_episodes import VariableDraw, VariableEpisodes


@dataclass(frozen=True)
class SourceData:
    """One source of a run: its name as the run names it, its dataset and its sampling weight."""

    name: str
    dataset: FewShotDataset
    weight: float = 1.0


class ConcatImages(ImageStore):
    """The image stores of several sources addressed as one: source ``s`` starts at ``offsets[s]``."""

    def __init__(self, stores: list[ImageStore], shape: tuple[int, int, int]):
        self.stores, self.shape = stores, shape
        sizes = torch.tensor([len(s) for s in stores], dtype=torch.long)
        self.offsets = torch.cumsum(sizes, 0) - sizes
        self.count = int(sizes.sum())

    def __len__(self) -> int:
        return self.count

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        flat = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        source = torch.searchsorted(self.offsets, flat, right=True) - 1
        out = torch.empty((len(flat), *self.shape), dtype=torch.uint8)
        for s in source.unique().tolist():
            rows = source == s
            out[rows] = self.stores[s].gather(flat[rows] - self.offsets[s]).reshape(-1, *self.shape)
        return out.view(*index.shape, *self.shape)


@dataclass
class MultiSourceDataset(FewShotDataset):
    """The sources' datasets as one (class names ``source/class``), and the sources themselves."""

    sources: tuple[SourceData, ...] = field(default_factory=tuple)


def combine(sources: list[SourceData]) -> MultiSourceDataset:
    """One dataset of several; their images must share channels and size (one backbone sees them all)."""
    first = sources[0]
    for other in sources[1:]:
        a, b = first.dataset, other.dataset
        if (a.channels, a.image_size) != (b.channels, b.image_size):
            fix = (f"give them one size, e.g. --dataset-opt {other.name}.image_size={a.image_size}"
                   if a.channels == b.channels else "choose sources that are all grayscale or all colour")
            raise ConfigError(
                f"sources {first.name!r} and {other.name!r} have different images ({a.channels}x{a.image_size}px "
                f"and {b.channels}x{b.image_size}px) and one model sees them all: {fix}"
            )
    shape = (first.dataset.channels, first.dataset.image_size, first.dataset.image_size)
    splits = {}
    for name in SPLITS:
        parts = [s.dataset.split(name) for s in sources]
        offsets = torch.cumsum(torch.tensor([0] + [p.num_classes for p in parts[:-1]]), 0)
        splits[name] = ClassSplit(
            ConcatImages([p.images for p in parts], shape),
            torch.cat([p.labels + int(o) for p, o in zip(parts, offsets, strict=True)]),
            [f"{s.name}/{c}" for s, p in zip(sources, parts, strict=True) for c in p.classes],
        )
    return MultiSourceDataset(JOIN.join(s.name for s in sources), splits["train"], splits["validation"],
                              splits["test"], shape[0], shape[1], _info(sources), tuple(sources))


def _info(sources: list[SourceData]) -> DatasetInfo:
    """What the combined images are: the first source's preparation (prediction follows one), ImageNet classes
    if any source has them, and every source's own record under ``details``."""
    first = sources[0].dataset.info
    differ = [s.name for s in sources[1:] if (s.dataset.info.invert, s.dataset.info.resample, s.dataset.info.crop)
              != (first.invert, first.resample, first.crop)]
    note = (f"sources {', '.join(differ)} prepare their images otherwise than {sources[0].name}; new images are "
            f"prepared as {sources[0].name}'s" if differ else None)
    return DatasetInfo(invert=first.invert, resample=first.resample, crop=first.crop,
                       imagenet_derived=any(s.dataset.info.imagenet_derived for s in sources), note=note,
                       details={"sources": {s.name: dict(s.dataset.info) for s in sources}})


def _pick(weights: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(weights, count, replacement=True, generator=gen)


class MixedTrainEpisodes(Dataset):
    """Item ``i``: meta-batch ``i`` of the current epoch, each episode from a source drawn by weight."""

    def __init__(self, sources: tuple[SourceData, ...], samplers: list, *, length: int, batch: int,
                 seed: int, num_tasks: int):
        self.sources, self.samplers, self.length, self.batch, self.seed = sources, samplers, length, batch, seed
        self.weights = torch.tensor([s.weight for s in sources], dtype=torch.double)
        # Every source's EpisodeSampler draws the run's ways, shots and queries; VariableEpisodeSamplers have none.
        self.geometry = getattr(samplers[0], "geometry", None)
        self.epoch = 0
        # A fixed pool of tasks (Flash's num_tasks), each with its source; -1 means a fresh task every draw.
        self.pool = self._draw(num_tasks, generator(seed, "task-pool")) if num_tasks > 0 else None

    def _draw(self, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | VariableDraw]:
        source = _pick(self.weights, count, gen)
        if self.geometry is None:
            return source, self._draw_variable(source, gen)
        index = torch.empty((count, self.geometry.ways, self.geometry.per_class), dtype=torch.long)
        for s in range(len(self.sources)):  # in source order: the draws do not depend on which sources came up
            rows = source == s
            index[rows] = self.samplers[s].sample(int(rows.sum()), gen)
        return source, index

    def _draw_variable(self, source: torch.Tensor, gen: torch.Generator) -> VariableDraw:
        """Each source's variable episodes (in source order, as above), put back in the order drawn and padded
        to the largest of them: a meta-batch mixing sources is one masked batch, like a single source's."""
        drawn = [(rows, self.samplers[s].sample(len(rows), gen))
                 for s in range(len(self.sources)) if len(rows := torch.nonzero(source == s).flatten())]
        order = torch.cat([rows for rows, _ in drawn])
        return VariableDraw.concat([d for _, d in drawn])[torch.argsort(order)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> SampledEpisodes | VariableEpisodes:
        gen = generator(self.seed, "train", self.epoch, i)
        if self.pool is None:
            source, index = self._draw(self.batch, gen)
        else:
            pick = torch.randint(len(self.pool[0]), (self.batch,), generator=gen)
            source, index = self.pool[0][pick], self.pool[1][pick]  # a VariableDraw pads to the picked tasks
        if self.geometry is None:
            return VariableEpisodes(_gather(self.sources, source, index.index, "train"), index.support_labels,
                                    index.query_labels, index.ways)
        return SampledEpisodes(_gather(self.sources, source, index, "train"), self.geometry)


class MixedLabelledBatches(Dataset):
    """Item ``i``: a plain batch of training images, each from a source drawn by weight, with its class among
    every source's training classes (the combined dataset's labels)."""

    def __init__(self, sources: tuple[SourceData, ...], *, length: int, batch: int, seed: int):
        self.sources, self.length, self.batch, self.seed = sources, length, batch, seed
        self.weights = torch.tensor([s.weight for s in sources], dtype=torch.double)
        counts = [s.dataset.train.num_classes for s in sources]
        self.class_offsets = [sum(counts[:s]) for s in range(len(sources))]
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        from metareg.datamodule import LabelledImages

        gen = generator(self.seed, "labelled", self.epoch, i)
        source = _pick(self.weights, self.batch, gen)
        index = torch.empty(self.batch, dtype=torch.long)
        labels = torch.empty(self.batch, dtype=torch.long)
        for s, data in enumerate(self.sources):
            rows = source == s
            index[rows] = torch.randint(len(data.dataset.train), (int(rows.sum()),), generator=gen)
            labels[rows] = data.dataset.train.labels[index[rows]] + self.class_offsets[s]
        return LabelledImages(_gather(self.sources, source, index, "train"), labels)


def _gather(sources: tuple[SourceData, ...], source: torch.Tensor, index: torch.Tensor, split: str) -> torch.Tensor:
    """uint8 images of ``index`` (sample indices within each row's source), shape ``index.shape + (C, H, W)``."""
    first = sources[0].dataset
    out = torch.empty((*index.shape, first.channels, first.image_size, first.image_size), dtype=torch.uint8)
    for s in source.unique().tolist():
        rows = source == s
        out[rows] = sources[s].dataset.split(split).images.gather(index[rows])
    return out
