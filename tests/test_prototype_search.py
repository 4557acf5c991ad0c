"""Nearest-prototype search in chunks equals the search over all classes at once; FAISS is an optional extra."""
from __future__ import annotations

import sys

import pytest
import torch

import metareg
from metareg import prototype_search as ps
from tests.test_predict import _random_folders, _tiny_checkpoint


def _data(classes=300, queries=17, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(queries, dim, generator=g, dtype=torch.float64), \
        torch.randn(classes, dim, generator=g, dtype=torch.float64)


def _reference(query, protos, metric, temperature, k):
    """The unchunked answer: every class scored at once."""
    if metric == "cosine":
        logits = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(protos, dim=-1).t()
    else:
        logits = -torch.cdist(query, protos).pow(2)
    logits = logits / temperature
    top, idx = logits.topk(k, dim=-1)
    return top, idx, logits.logsumexp(-1)


def agrees_with_reference(search, query, protos, metric, temperature, k) -> bool:
    found = search.search(query, k)
    top, idx, lse = _reference(query, protos, metric, temperature, k)
    return (torch.equal(found.indices, idx) and torch.allclose(found.logits, top, atol=1e-9)
            and torch.allclose(found.logsumexp, lse, atol=1e-9))


@pytest.mark.parametrize("metric", ps.METRICS)
@pytest.mark.parametrize("chunk", [7, 64, 299, 300, 1000])
def test_chunked_exact_search_equals_the_unchunked_argmin(metric, chunk):
    query, protos = _data()
    search = ps.ExactSearch(protos, metric, temperature=0.5, chunk_size=chunk)
    assert agrees_with_reference(search, query, protos, metric, 0.5, k=5)
    assert torch.equal(search.search(query, 1).indices[:, 0], _reference(query, protos, metric, 0.5, 1)[1][:, 0])


def test_probabilities_over_every_class_sum_to_one():
    query, protos = _data()
    every = ps.ExactSearch(protos, chunk_size=64).search(query, 300)
    assert torch.allclose(every.probabilities.sum(-1), torch.ones(17, dtype=torch.float64))


@pytest.mark.parametrize("mutation", ["drop the last class of each chunk", "overlap chunks by one"])
def test_the_check_fails_on_a_mutated_chunk_boundary(monkeypatch, mutation):
    original = ps.chunk_bounds

    def mutated(n, size):
        for start, stop in original(n, size):
            yield (start, stop - 1) if mutation.startswith("drop") else (max(0, start - 1), stop)

    query, protos = _data()
    monkeypatch.setattr(ps, "chunk_bounds", mutated)
    broken = [agrees_with_reference(ps.ExactSearch(protos, metric, 0.5, chunk_size=7), query, protos, metric, 0.5, 5)
              for metric in ps.METRICS]
    assert broken == [False, False]


def test_bfloat16_prototypes_take_half_the_memory_and_mostly_agree():
    query, protos = _data(classes=2000, queries=200, dim=64)
    exact = ps.ExactSearch(protos.float(), chunk_size=500)
    half = ps.ExactSearch(protos.float(), chunk_size=500, dtype=torch.bfloat16)
    assert half.prototypes.dtype == torch.bfloat16
    assert half.prototypes.element_size() * 2 == exact.prototypes.element_size()
    same = (half.search(query, 1).indices == exact.search(query, 1).indices).float().mean()
    assert same > 0.9, f"bfloat16 top-1 agrees with float32 on only {same:.0%} of queries"


def test_bad_settings_are_refused_by_name():
    _, protos = _data()
    for kwargs, words in [({"metric": "manhattan"}, "manhattan"), ({"temperature": 0}, "temperature"),
                          ({"chunk_size": 0}, "chunk_size")]:
        with pytest.raises(metareg.MetaregError, match=words):
            ps.ExactSearch(protos, **kwargs)
    with pytest.raises(metareg.MetaregError, match="'annoy' is not one of exact, faiss"):
        ps.build_search(protos, "euclidean", 1.0, index="annoy")


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_a_fitted_prototypical_classifier_is_searched_exactly_as_it_predicts(tmp_path, distance):
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt", "prototypicalnetworks")
    support, query = _random_folders(tmp_path, classes=5, queries=6)
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    clf.strategy.distance = distance
    search = ps.classifier_search(clf, chunk_size=2)
    images = clf.load_images(sorted(query.iterdir()))
    found = search.search(ps.embed(clf, images), k=3)
    probs = clf.predict_proba(images)
    top, idx = probs.topk(3, dim=-1)
    assert torch.equal(found.indices, idx)
    assert torch.allclose(found.probabilities, top, atol=1e-5)


def test_strategies_without_a_prototype_head_get_no_search():
    class Adapting:  # e.g. MAML: no head that predicts from features alone
        def export_head(self):
            return None

    class Clf:
        strategy, state = Adapting(), {"support": torch.zeros(2, 1, 4, 4)}

    assert ps.scorer_of(Adapting()) is None and ps.classifier_search(Clf()) is None


def test_faiss_index_finds_most_true_neighbours():
    pytest.importorskip("faiss")
    query, protos = _data(classes=4000, queries=300, dim=16)
    approx = ps.FaissSearch(protos, "euclidean", nlist=40, nprobe=8)
    assert type(approx.index).__name__ == "IndexIVFFlat"
    truth = ps.ExactSearch(protos).search(query, 1).indices
    recall = (approx.search(query, 1).indices == truth).float().mean()
    assert recall > 0.8, f"recall@1 {recall:.2f}"
    # With every cell probed the inverted file is exact.
    full = ps.FaissSearch(protos, "euclidean", nlist=40, nprobe=40)
    assert torch.equal(full.search(query, 1).indices, truth)


def test_without_faiss_the_approximate_index_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` meets where it is not installed
    with pytest.raises(metareg.MetaregError) as caught:
        ps.build_search(torch.zeros(3, 2), "euclidean", 1.0, index="faiss")
    assert "metareg-core[faiss]" in str(caught.value) and "faiss-cpu" in str(caught.value)
