"""Variable episodes (``--episodes variable``): Meta-Dataset's sampling procedure, the padded batch
records, and the masked loss and accuracy the core computes on them."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metareg.episodes import PAD_LABEL, EpisodeBatch, generator
from metareg.errors import DataError
from metareg.splits import TensorImages
from metareg.variable_episodes import VariableDraw, VariableEpisodes, VariableEpisodeSampler


def _labels(counts):
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


def _sampler(counts, **kwargs):
    labels = _labels(counts)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    return labels, VariableEpisodeSampler(labels, [f"c{i}" for i in range(len(counts))], split="train", **kwargs)


def _episodes(draw: VariableDraw):
    """Per episode: support indices and labels, query indices and labels, without padding."""
    s = draw.support_labels.shape[1]
    for b in range(len(draw)):
        sl, ql = draw.support_labels[b], draw.query_labels[b]
        yield draw.index[b, :s][sl != PAD_LABEL], sl[sl != PAD_LABEL], draw.index[b, s:][ql != PAD_LABEL], \
            ql[ql != PAD_LABEL]


COUNTS = [20] * 6 + [7, 9, 30, 40, 300, 300]


def test_episodes_follow_the_meta_dataset_procedure():
    labels, sampler = _sampler(COUNTS)
    counts = torch.tensor(COUNTS)
    draw = sampler.sample(120, generator("variable", 0))
    seen_ways, imbalanced = set(), 0
    for (si, sl, qi, ql), ways in zip(_episodes(draw), draw.ways.tolist(), strict=True):
        seen_ways.add(ways)
        assert 5 <= ways <= 12
        classes = [int(labels[si[sl == c][0]]) for c in range(ways)]
        assert len(set(classes)) == ways, "an episode repeats a class"
        for c, cls in enumerate(classes):  # each episode label is one dataset class, in support and query
            assert (labels[si[sl == c]] == cls).all() and (labels[qi[ql == c]] == cls).all()
        n = counts[classes]
        shots = torch.bincount(sl, minlength=ways)
        queries = torch.bincount(ql, minlength=ways)
        q = min(10, int(n.min()) // 2)
        assert (queries == q).all(), "the query set is balanced, min(10, half the smallest class)"
        assert (shots >= 1).all() and (shots <= n - q).all()
        assert shots.sum() <= 500
        # The budget: sum_c ceil(beta * min(100, n_c - q)) for some beta in (0, 1], capped at 500, less the
        # floors of the proportional split (at most one image per class lost), clipped at n_c - q.
        assert shots.sum() <= min(500, int((n - q).clamp(max=100).sum()))
        everything = torch.cat([si, qi])
        assert len(everything.unique()) == len(everything), "a sample appears twice in an episode"
        imbalanced += int(shots.max() > shots.min())
    assert seen_ways == set(range(5, 13)), "ways are uniform in [5, min(50, classes)]"
    assert imbalanced > 60, "support sets are class-imbalanced"


def test_ways_stop_at_fifty_and_support_at_five_hundred():
    _, sampler = _sampler([300] * 60)
    draw = sampler.sample(20, generator("variable", 1))
    assert int(draw.ways.max()) <= 50 and int(draw.ways.max()) > 40
    support_sizes = (draw.support_labels != PAD_LABEL).sum(1)
    assert int(support_sizes.max()) <= 500 and int(support_sizes.max()) > 400
    assert int((draw.query_labels != PAD_LABEL).sum(1).max()) == 10 * int(draw.ways.max())


def test_draws_are_a_function_of_the_generator():
    _, sampler = _sampler(COUNTS)
    a, b = sampler.sample(4, generator("s", 3)), sampler.sample(4, generator("s", 3))
    c = sampler.sample(4, generator("s", 4))
    assert torch.equal(a.index, b.index) and torch.equal(a.support_labels, b.support_labels)
    assert not torch.equal(a.support_labels, c.support_labels) or not torch.equal(a.index, c.index)


@pytest.mark.parametrize("counts, match", [([20] * 4, "4 classes but variable"), ([20] * 5 + [1], "'c5' has 1")])
def test_splits_that_cannot_follow_the_procedure_are_refused(counts, match):
    with pytest.raises(DataError, match=match):
        _sampler(counts)


def test_draws_concatenate_and_select_with_padding():
    _, sampler = _sampler(COUNTS)
    parts = [sampler.sample(1, generator("c", j)) for j in range(3)]
    joined = VariableDraw.concat(parts)
    assert len(joined) == 3 and torch.equal(joined.ways, torch.cat([p.ways for p in parts]))
    for j, part in enumerate(parts):
        alone = joined[torch.tensor([j])]  # as a task pool (num_tasks) is indexed: trimmed to its own size
        assert [t.tolist() for t in next(_episodes(part))] == [t.tolist() for t in next(_episodes(alone))]
        assert alone.index.shape == part.index.shape and alone.support_labels.shape == part.support_labels.shape


def test_variable_episodes_prepare_into_a_masked_batch():
    labels, sampler = _sampler(COUNTS)
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    draw = sampler.sample(3, generator("p", 0))
    record = sampler.batch(TensorImages(images), draw, torch.arange(3))
    seen = []
    batch = record.to("cpu").prepared(lambda x: seen.append(len(x)) or x + 1)
    assert isinstance(record, VariableEpisodes) and batch.padded
    assert seen == [int((draw.support_labels != PAD_LABEL).sum() + (draw.query_labels != PAD_LABEL).sum())]
    assert batch.ways == int(draw.ways.max()) and torch.equal(batch.way_mask.sum(1), draw.ways)
    assert torch.equal(batch.support_mask, draw.support_labels != PAD_LABEL)
    assert (batch.support[~batch.support_mask] == 0).all() and (batch.query[~batch.query_mask] == 0).all()
    s = draw.support_labels.shape[1]
    expected = (draw.index[:, :s][batch.support_mask] % 256).float().div(255) + 1
    assert torch.allclose(batch.support[batch.support_mask][:, 0, 0, 0], expected)


def _one(shots, queries, seed):
    g = torch.Generator().manual_seed(seed)
    ways = len(shots)
    ys = torch.repeat_interleave(torch.arange(ways), torch.tensor(shots)).unsqueeze(0)
    yq = torch.arange(ways).repeat_interleave(queries).unsqueeze(0)
    return EpisodeBatch(torch.rand(1, len(ys[0]), 1, 2, 2, generator=g), ys, torch.rand(1, len(yq[0]), 1, 2, 2,
                        generator=g), yq, ways)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_masked_loss_and_accuracy_are_the_mean_over_episodes_alone(smoothing):
    alone = [_one([1, 2, 1], 2, 0), _one([3, 1, 1, 1, 2], 1, 1)]
    padded = EpisodeBatch.pad(alone)
    logits = torch.randn(2, padded.query.shape[1], padded.ways, generator=torch.Generator().manual_seed(5))
    logits = padded.mask_ways(logits)
    loss = padded.query_loss(logits, smoothing)
    ref = [F.cross_entropy(logits[b, :e.query.shape[1], :e.ways], e.query_labels[0], label_smoothing=smoothing)
           for b, e in enumerate(alone)]
    assert torch.allclose(loss, torch.stack(ref).mean())
    acc = [(logits[b, :e.query.shape[1], :e.ways].argmax(-1) == e.query_labels[0]).float().mean()
           for b, e in enumerate(alone)]
    assert torch.allclose(padded.query_accuracy(logits), torch.stack(acc))
    if smoothing:  # why the masked loss exists: smoothing over -inf logits of padded ways is infinite
        naive = F.cross_entropy(logits.flatten(0, 1), padded.query_labels.flatten(), label_smoothing=smoothing)
        assert math.isinf(naive.item())


def test_unpadded_batches_keep_the_plain_loss():
    batch = _one([2, 2, 2], 3, 0)
    logits = torch.randn(1, 9, 3)
    assert not batch.padded and batch.mask_ways(logits) is logits
    assert torch.equal(batch.query_loss(logits), F.cross_entropy(logits.flatten(0, 1), batch.query_labels.flatten()))


def test_a_padded_batch_needs_all_three_masks():
    b = EpisodeBatch.pad([_one([1, 2], 1, 0), _one([1, 1, 1], 1, 1)])
    with pytest.raises(ValueError, match="way_mask none"):
        EpisodeBatch(b.support, b.support_labels, b.query, b.query_labels, b.ways, support_mask=b.support_mask,
                     query_mask=b.query_mask)
    with pytest.raises(ValueError, match=r"query_mask torch.bool \(2, 2\), expected bool \(2, 3\)"):
        EpisodeBatch(b.support, b.support_labels, b.query, b.query_labels, b.ways, support_mask=b.support_mask,
                     query_mask=b.query_mask[:, :2], way_mask=b.way_mask)
