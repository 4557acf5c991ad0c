"""The episode sampler: shapes, class-major order, no repeats, reproducibility, validation errors."""
from __future__ import annotations

import pytest
import torch

import metareg
from metareg.episodes import (
    EpisodeBatch,
    EpisodeSampler,
    episode_labels,
    generator,
    split_episodes,
    stream_seed,
)


def _labels(counts):
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


def _shuffled(counts, seed=0):
    labels = _labels(counts)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


CLASSES = [f"alpha/c{i}" for i in range(12)]


@pytest.fixture
def sampler():
    labels = _shuffled([20] * 12)
    return labels, EpisodeSampler(labels, CLASSES, ways=5, shots=2, queries=3, split="train")


def test_shape_and_dtype(sampler):
    _, s = sampler
    idx = s.sample(7, generator("t", 0))
    assert idx.shape == (7, 5, 5) and idx.dtype == torch.long


def test_every_row_is_one_class_and_classes_differ(sampler):
    labels, s = sampler
    idx = s.sample(200, generator("t", 1))
    lab = labels[idx]  # (B, ways, n)
    assert (lab == lab[..., :1]).all(), "a class row mixes classes"
    per_episode = lab[..., 0]
    assert all(len(set(row.tolist())) == 5 for row in per_episode), "a class repeats within an episode"


def test_no_sample_repeats_within_an_episode(sampler):
    _, s = sampler
    idx = s.sample(200, generator("t", 2)).flatten(1)
    assert all(len(set(row.tolist())) == idx.shape[1] for row in idx)


def test_all_classes_and_samples_get_used(sampler):
    labels, s = sampler
    idx = s.sample(2000, generator("t", 3))
    assert set(labels[idx].unique().tolist()) == set(range(12))
    assert len(idx.unique()) == len(labels)  # padding never leaks, every sample is reachable
    # class choice is roughly uniform
    freq = torch.bincount(labels[idx[..., 0]].flatten(), minlength=12).float() / (2000 * 5)
    assert (freq - 1 / 12).abs().max() < 0.03


def test_class_major_labels_and_split_into_support_and_query(sampler):
    labels, s = sampler
    idx = s.sample(4, generator("t", 4))
    images = torch.arange(len(labels)).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)[idx]  # (B, ways, n, 1, 2, 2)
    support, query = split_episodes(images, shots=2)
    assert support.shape == (4, 10, 1, 2, 2) and query.shape == (4, 15, 1, 2, 2)
    ys, yq = episode_labels(4, 5, 2), episode_labels(4, 5, 3)
    assert ys[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert yq[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    # remapped label k is the k-th sampled class for support and query alike
    sid = support[:, :, 0, 0, 0]
    qid = query[:, :, 0, 0, 0]
    for b in range(4):
        for k in range(5):
            cls = labels[idx[b, k, 0]]
            assert (labels[sid[b][ys[b] == k]] == cls).all() and (labels[qid[b][yq[b] == k]] == cls).all()
        assert not set(sid[b].tolist()) & set(qid[b].tolist())
    batch = EpisodeBatch(support.float(), ys, query.float(), yq, ways=5)
    assert batch.meta_batch_size == 4 and batch.to("cpu").query_labels.shape == (4, 15)


def test_seeded_reproducibility(sampler):
    _, s = sampler
    a = s.sample(16, generator("seed", 0, "train", 5))
    b = s.sample(16, generator("seed", 0, "train", 5))
    c = s.sample(16, generator("seed", 0, "train", 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert stream_seed("x", 1) == stream_seed("x", 1) != stream_seed("x", 2)
    assert 0 <= stream_seed("x", 1) < 2**63
    # a fresh sampler over the same labels draws the same episodes
    labels = _shuffled([20] * 12)
    other = EpisodeSampler(labels, CLASSES, ways=5, shots=2, queries=3, split="train")
    assert torch.equal(other.sample(16, generator("seed", 0, "train", 5)), a)


def test_uneven_class_sizes():
    counts = [5, 30, 7, 12, 5, 9]
    labels = _shuffled(counts, seed=1)
    s = EpisodeSampler(labels, [f"c{i}" for i in range(6)], ways=4, shots=1, queries=4, split="validation")
    idx = s.sample(500, generator("u", 0))
    lab = labels[idx]
    assert (lab == lab[..., :1]).all()
    assert all(len(set(r.tolist())) == 20 for r in idx.flatten(1))
    # the big class's samples are all reachable, the small ones fully used when drawn
    big = torch.nonzero(labels == 1).flatten()
    assert set(idx.flatten().tolist()) >= set(big.tolist())


def test_exact_fit_uses_whole_class():
    labels = _labels([5, 5, 5])
    s = EpisodeSampler(labels, ["a", "b", "c"], ways=3, shots=2, queries=3, split="test")
    idx = s.sample(3, generator("x"))
    for b in range(3):
        assert sorted(idx[b].flatten().tolist()) == list(range(15))


def test_ways_larger_than_split_names_the_split():
    labels = _labels([10] * 4)
    with pytest.raises(metareg.DataError, match=r"validation split has 4 classes but 5-way"):
        EpisodeSampler(labels, list("abcd"), ways=5, shots=1, queries=1, split="validation")


def test_class_too_small_names_the_class():
    labels = _labels([10, 10, 3, 10])
    with pytest.raises(metareg.DataError, match=r"test split: class 'Greek/c2' has 3 samples .* 2 \+ 2 = 4"):
        EpisodeSampler(labels, ["Greek/c0", "Greek/c1", "Greek/c2", "Greek/c3"], ways=2, shots=2, queries=2,
                       split="test")


def test_empty_class_is_refused():
    labels = _labels([10, 10, 0, 10])
    with pytest.raises(metareg.DataError, match="class 'c2' has 0 samples"):
        EpisodeSampler(labels, ["c0", "c1", "c2", "c3"], ways=2, shots=1, queries=1, split="train")


@pytest.mark.parametrize("field, value", [
    ("ways", 0), ("ways", -3), ("shots", 0), ("queries", 0), ("queries", -1), ("shots", 1.5), ("ways", "5"),
    ("shots", True), ("ways", 1),
])
def test_non_positive_or_non_integer_values(field, value):
    kwargs = dict(ways=3, shots=1, queries=1)
    kwargs[field] = value
    with pytest.raises(metareg.DataError, match=f"train: {field} must be"):
        EpisodeSampler(_labels([5] * 4), list("abcd"), split="train", **kwargs)
