"""Nearest-prototype search that stays bounded in memory as the number of classes grows.

A prototype-style classifier (prototypical networks, or any strategy whose support state is
``{"prototypes": (C, D)}`` and whose ``export_head()`` keeps :class:`PrototypeScorer`) scores a
query against every class. With 100,000 classes a batch of 64 queries is a 64 x 100,000 score
matrix, and a probability dict of 100,000 entries per answer. Here the classes are visited in
chunks of ``chunk_size``: each chunk's best ``k`` are merged into a running top-k and the
softmax normaliser is accumulated as a running log-sum-exp, so memory is ``queries x chunk_size``
and the top-k probabilities are exact over all classes.

* :class:`ExactSearch` — exact, in chunks; ``dtype=torch.bfloat16`` stores the prototypes in
  bfloat16 (half the memory) and multiplies in it, accumulating scores in float32.
* :class:`FaissSearch` — an approximate inverted-file index (FAISS), for very large class counts;
  an optional extra (``pip install 'metareg-core[faiss]'``). Its probabilities are normalised over
  the ``k`` classes it returns, since it never sees the others.

Both answer ``search(queries, k) -> TopK``, with logits on the head's scale (``-squared distance /
temperature`` or ``cosine / temperature``), exactly what ``export_head().logits`` gives.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from metareg.errors import MetaregError, OptionError

METRICS = ("euclidean", "cosine")
INDEXES = ("exact", "faiss")
DEFAULT_CHUNK = 4096
FAISS_HINT = "pip install 'metareg-core[faiss]' (the faiss-cpu package)"


@runtime_checkable
class PrototypeScorer(Protocol):
    """What a strategy's ``export_head()`` exposes for search at scale (protonet's ``PrototypeHead`` does):
    ``cosine`` (True: cosine similarity, False: negative squared Euclidean distance) and ``temperature``."""

    cosine: bool
    temperature: float

    def logits(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TopK:
    """The ``k`` best classes of each query: ``logits`` and class ``indices`` ``(Q, k)``, best first, and
    ``logsumexp`` ``(Q,)`` of the logits the search saw (all classes for the exact search)."""

    logits: torch.Tensor
    indices: torch.Tensor
    logsumexp: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        return (self.logits - self.logsumexp.unsqueeze(1)).exp()


def chunk_bounds(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _check(metric: str, temperature: float, prototypes: torch.Tensor) -> None:
    if metric not in METRICS:
        raise OptionError(f"prototype search metric {metric!r} is not one of {', '.join(METRICS)}")
    if not temperature > 0:
        raise OptionError(f"prototype search temperature must be > 0, got {temperature}")
    if prototypes.dim() != 2 or prototypes.shape[0] < 1:
        raise OptionError(f"prototypes must be a (classes, features) matrix, got shape {tuple(prototypes.shape)}")


class ExactSearch:
    """Exact top-k over all prototypes, ``chunk_size`` classes at a time."""

    def __init__(self, prototypes: torch.Tensor, metric: str = "euclidean", temperature: float = 1.0, *,
                 chunk_size: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None):
        _check(metric, temperature, prototypes)
        if chunk_size < 1:
            raise OptionError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.metric, self.temperature, self.chunk_size = metric, float(temperature), int(chunk_size)
        self.dtype = dtype or (prototypes.dtype if prototypes.is_floating_point() else torch.float32)
        self.score_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        protos = prototypes.detach().to(self.score_dtype)
        if metric == "cosine":
            protos = F.normalize(protos, dim=-1)
        else:  # ||q - p||^2 = ||q||^2 - 2 q.p + ||p||^2; the norms are kept at full precision
            self.sq_norms = protos.pow(2).sum(-1)
        self.size = protos.shape[0]
        self.augmented = metric == "euclidean" and self.dtype == self.score_dtype
        if self.augmented:
            # [-2p, ||p||^2, 1] . [q, 1, ||q||^2] = ||q - p||^2: one matrix product, no temporaries
            # (torch.cdist's own trick); in bfloat16 the norms would swamp the products, so not there.
            ones = torch.ones_like(self.sq_norms).unsqueeze(1)
            protos = torch.cat([-2 * protos, self.sq_norms.unsqueeze(1), ones], 1)
        self.prototypes = protos.to(self.dtype).contiguous()

    def __len__(self) -> int:
        return self.size

    def _scores(self, query: torch.Tensor, query_sq: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        scores = (query @ self.prototypes[start:stop].t()).to(self.score_dtype)
        if self.metric == "cosine":
            return scores.mul_(1 / self.temperature)
        if not self.augmented:
            scores.mul_(-2).add_(self.sq_norms[start:stop]).add_(query_sq)
        return scores.clamp_min_(0).mul_(-1 / self.temperature)

    def search(self, queries: torch.Tensor, k: int = 5) -> TopK:
        query = queries.detach().to(self.prototypes.device, self.score_dtype)
        if self.metric == "cosine":
            query = F.normalize(query, dim=-1)
        query_sq = None if self.metric == "cosine" else query.pow(2).sum(-1, keepdim=True)
        if self.augmented:
            query = torch.cat([query, torch.ones_like(query_sq), query_sq], 1)
        query = query.to(self.dtype)
        k = max(1, min(int(k), len(self)))
        best = torch.full((query.shape[0], 0), float("-inf"), dtype=self.score_dtype, device=query.device)
        best_idx = torch.zeros((query.shape[0], 0), dtype=torch.long, device=query.device)
        lse = torch.full((query.shape[0],), float("-inf"), dtype=self.score_dtype, device=query.device)
        for start, stop in chunk_bounds(len(self), self.chunk_size):
            scores = self._scores(query, query_sq, start, stop)
            lse = torch.logaddexp(lse, scores.logsumexp(-1))
            top, idx = scores.topk(min(k, stop - start), dim=-1)
            merged, pos = torch.cat([best, top], 1).topk(min(k, best.shape[1] + top.shape[1]), dim=-1)
            best_idx = torch.cat([best_idx, idx + start], 1).gather(1, pos)
            best = merged
        return TopK(best, best_idx, lse)


class FaissSearch:
    """Approximate top-k through a FAISS inverted-file index (``nlist`` cells, ``nprobe`` visited per query).

    Below ``39 * nlist`` classes (too few to train the cells) the index is FAISS's exact flat one."""

    def __init__(self, prototypes: torch.Tensor, metric: str = "euclidean", temperature: float = 1.0, *,
                 nlist: int | None = None, nprobe: int = 16):
        faiss = import_faiss()
        _check(metric, temperature, prototypes)
        self.metric, self.temperature = metric, float(temperature)
        data = prototypes.detach().float().cpu()
        if metric == "cosine":
            data = F.normalize(data, dim=-1)
        data = data.contiguous().numpy()
        n, dim = data.shape
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        self.nlist = nlist or max(1, int(4 * n ** 0.5))
        if n < 39 * self.nlist:
            self.index = faiss.IndexFlat(dim, faiss_metric)
        else:
            quantizer = faiss.IndexFlat(dim, faiss_metric)
            self.index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss_metric)
            self.index.train(data)
            self.index.nprobe = min(int(nprobe), self.nlist)
            self._quantizer = quantizer  # FAISS does not own it: keep it alive as long as the index
        self.index.add(data)
        self.size = n

    def __len__(self) -> int:
        return self.size

    def search(self, queries: torch.Tensor, k: int = 5) -> TopK:
        query = queries.detach().float().cpu()
        if self.metric == "cosine":
            query = F.normalize(query, dim=-1)
        k = max(1, min(int(k), self.size))
        values, indices = self.index.search(query.contiguous().numpy(), k)
        values, indices = torch.from_numpy(values), torch.from_numpy(indices).long()
        logits = (values if self.metric == "cosine" else -values) / self.temperature
        logits = logits.masked_fill(indices < 0, float("-inf"))  # fewer than k found in the cells probed
        return TopK(logits, indices.clamp_min(0), logits.logsumexp(-1))


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise MetaregError(f"the approximate prototype index needs FAISS, which is not installed: {FAISS_HINT}, "
                           "or use the exact index") from None
    return faiss


def build_search(prototypes: torch.Tensor, metric: str, temperature: float, *, index: str = "exact",
                 chunk_size: int = DEFAULT_CHUNK, dtype: torch.dtype | None = None, nprobe: int = 16):
    """The search of ``index`` kind (``exact`` or ``faiss``) over ``prototypes``."""
    if index == "exact":
        return ExactSearch(prototypes, metric, temperature, chunk_size=chunk_size, dtype=dtype)
    if index == "faiss":
        return FaissSearch(prototypes, metric, temperature, nprobe=nprobe)
    raise OptionError(f"prototype index {index!r} is not one of {', '.join(INDEXES)}")


def scorer_of(strategy) -> PrototypeScorer | None:
    """The strategy's prototype head when it keeps :class:`PrototypeScorer`, else ``None``."""
    head = strategy.export_head() if hasattr(strategy, "export_head") else None
    return head if isinstance(head, PrototypeScorer) else None


def classifier_search(clf, **options):
    """The search over a fitted :class:`metareg.FewShotClassifier`'s prototypes, or ``None`` when its strategy
    is not prototype-style (its state has no ``prototypes`` or its head no metric); ``options`` as
    :func:`build_search`."""
    head = scorer_of(clf.strategy)
    if head is None or not clf.state or "prototypes" not in clf.state:
        return None
    metric = "cosine" if head.cosine else "euclidean"
    return build_search(clf.state["prototypes"], metric, head.temperature, **options)


def embed(clf, images: torch.Tensor) -> torch.Tensor:
    """Backbone features ``(N, D)`` of a uint8 batch ``(N, C, S, S)``, prepared as the classifier prepares it."""
    with torch.no_grad():
        return clf.strategy.embed(clf.prepare(images).unsqueeze(0))[0].float()
