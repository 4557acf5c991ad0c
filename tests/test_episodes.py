"""The episode sampler: shapes, class-major order, no repeats, reproducibility, validation errors; the geometry
that travels with each batch and the one place where support is split from query."""
from __future__ import annotations

import pytest
import torch

import metareg
import metareg.episodes
from metareg.episodes import (
    EpisodeBatch,
    EpisodeGeometry,
    EpisodeSampler,
    SampledEpisodes,
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


# ---------------------------------------------------------------- the geometry travels with the batch
def _numbered(labels, idx):
    """uint8 images whose every pixel holds the sample index, gathered as the sampler's ``idx``."""
    assert len(labels) < 256
    return torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)[idx]


@pytest.mark.parametrize("ways, shots, queries, message", [
    (1, 1, 1, "ways must be at least 2"), (0, 1, 1, "ways must be a positive integer, got 0"),
    (5, 0, 1, "shots must be a positive integer"), (5, 1.5, 1, "shots must be a positive integer, got 1.5"),
    (5, 1, True, "queries must be a positive integer, got True"),
])
def test_a_geometry_no_episode_can_have_is_refused(ways, shots, queries, message):
    with pytest.raises(metareg.DataError, match=f"episode geometry: {message}"):
        EpisodeGeometry(ways, shots, queries)


def test_the_sampler_ships_its_geometry_and_ints_are_plain():
    import numpy as np

    s = EpisodeSampler(_labels([6] * 4), list("abcd"), ways=np.int64(3), shots=2, queries=np.int32(1), split="train")
    assert s.geometry == EpisodeGeometry(3, 2, 1) and type(s.geometry.ways) is int
    assert s.geometry.per_class == 3 and str(s.geometry) == "3-way 2-shot 1-query"


def test_from_uint8_splits_by_the_geometry_and_labels_class_major(sampler):
    labels, s = sampler  # 5-way, 2 shots, 3 queries
    idx = s.sample(4, generator("t", 5))
    calls = []

    def transform(x):
        calls.append(tuple(x.shape))
        return x * 2

    batch = SampledEpisodes(_numbered(labels, idx), s.geometry, torch.arange(10, 14)).prepared(transform)
    assert calls == [(4 * 5 * 5, 1, 2, 2)]  # one call over every image of the batch, before the split
    assert batch.support.shape == (4, 10, 1, 2, 2) and batch.query.shape == (4, 15, 1, 2, 2)
    assert batch.support.dtype == torch.float32 and batch.ways == 5
    ids = (batch.support[..., 0, 0, 0] * 255 / 2).round().long()
    qids = (batch.query[..., 0, 0, 0] * 255 / 2).round().long()
    assert torch.equal(ids, idx[:, :, :2].flatten(1)) and torch.equal(qids, idx[:, :, 2:].flatten(1))
    assert torch.equal(batch.support_labels, episode_labels(4, 5, 2))
    assert torch.equal(batch.query_labels, episode_labels(4, 5, 3))
    assert batch.episode_ids.tolist() == [10, 11, 12, 13]
    for b in range(4):  # label k is the k-th sampled class, in support and query alike
        for k in range(5):
            assert (labels[ids[b][batch.support_labels[b] == k]] == labels[idx[b, k, 0]]).all()
            assert (labels[qids[b][batch.query_labels[b] == k]] == labels[idx[b, k, 0]]).all()


def test_images_drawn_with_another_geometry_are_refused(sampler):
    labels, s = sampler
    images = _numbered(labels, s.sample(2, generator("t", 6)))  # (2, 5, 5, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\(2, 5, 5, 1, 2, 2\) do not match their 5-way 1-shot 3-query geometry"):
        SampledEpisodes(images, EpisodeGeometry(5, 1, 3))
    with pytest.raises(ValueError, match=r"do not match their 4-way 2-shot 3-query"):
        EpisodeBatch.from_uint8(images, EpisodeGeometry(4, 2, 3))
    with pytest.raises(ValueError, match="3 episode ids for 2 episodes"):
        SampledEpisodes(images, s.geometry, torch.arange(3))
    assert SampledEpisodes(images, s.geometry).prepared().support.shape == (2, 10, 1, 2, 2)


def _split_one_too_far(images, shots):
    return images[:, :, : shots + 1].flatten(1, 2), images[:, :, shots + 1:].flatten(1, 2)


def _labels_one_short(count, ways, per_class, device=None):
    return torch.arange(ways, device=device).repeat_interleave(per_class)[1:].expand(count, -1)


@pytest.mark.parametrize("name, mutant", [("split_episodes", _split_one_too_far),
                                          ("episode_labels", _labels_one_short)])
def test_a_split_that_disagrees_with_its_labels_is_caught(sampler, monkeypatch, name, mutant):
    labels, s = sampler
    images = _numbered(labels, s.sample(2, generator("t", 7)))
    assert EpisodeBatch.from_uint8(images, s.geometry).support.shape[1] == 10  # the real split passes
    monkeypatch.setattr(metareg.episodes, name, mutant)
    with pytest.raises(ValueError, match="EpisodeBatch shapes disagree"):
        EpisodeBatch.from_uint8(images, s.geometry)


def test_an_episode_batch_whose_labels_do_not_fit_its_images_is_refused():
    x, y = torch.zeros(2, 6, 1, 4, 4), torch.zeros(2, 6, dtype=torch.long)
    assert EpisodeBatch(x, y, x, y, 3).meta_batch_size == 2
    assert EpisodeBatch(x, y, x[:, :4], None, 3).query_labels is None  # prediction: no query labels
    with pytest.raises(ValueError, match=r"support_labels \(2, 5\) for support \(2, 6, 1, 4, 4\)"):
        EpisodeBatch(x, y[:, :5], x, y, 3)
    with pytest.raises(ValueError, match=r"query_labels \(2, 6\) for query \(2, 4, 1, 4, 4\)"):
        EpisodeBatch(x, y, x[:, :4], y, 3)
    with pytest.raises(ValueError, match=r"query \(1, 6, 1, 4, 4\) for 2 episodes"):
        EpisodeBatch(x, y, x[:1], None, 3)
    with pytest.raises(ValueError, match=r"episode_ids \(3,\) for 2 episodes"):
        EpisodeBatch(x, y, x, y, 3, torch.arange(3))
