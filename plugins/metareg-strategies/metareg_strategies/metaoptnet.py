"""MetaOptNet (Lee, Maji, Ravichandran and Soatto, 2019): a differentiable convex base learner on the embeddings."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_strategies.inner_loop import as_full, full_precision
from metareg_strategies.masked import embed_real, episode_images
from metareg_strategies.option_checks import flag, one_of, positive
from metareg_strategies.svm import crammer_singer_svm


def ridge_scores(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
                 lam: float, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Query scores of one-vs-all ridge regression on one-hot targets, fitted per episode.

    Dual (kernel) form, as in MetaOptNet: ``alpha = (K + lam I)^-1 Y`` with ``K`` the support Gram
    matrix, scores ``= Q S^T alpha`` (equal to ``Q W`` with the primal ``W = (S^T S + lam I)^-1 S^T Y``);
    one batched ``torch.linalg.solve`` of size support-count for the whole meta-batch.

    ``targets`` (default: one-hot ``support_labels``) of a padded batch has zero rows at padded support
    slots; with their features zero too, the system splits into the real one and ``lam * alpha = 0``.
    """
    if targets is None:
        targets = F.one_hot(support_labels, ways).to(support.dtype)
    gram = support @ support.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    alpha = torch.linalg.solve(gram + lam * eye, targets)
    return (query @ support.transpose(1, 2)) @ alpha


BaseLearner = Literal["svm", "ridge"]


class MetaOptNet(metareg.Strategy):
    """MetaOptNet: fit a convex classifier (ridge regression or a multi-class SVM) on each
    episode's support embeddings and backpropagate through its solution.

    The whole meta-batch is solved at once: ridge in closed form (batched linear solve), the
    Crammer-Singer SVM as a batched QP (accelerated projected gradient, then an active-set KKT
    solve whose gradient is the exact implicit gradient); no qpth dependency. Any number of ways.

    base_learner: 'svm' (MetaOptNet-SVM, multi-class Crammer-Singer SVM) or 'ridge' (MetaOptNet-RR).
    svm_c: SVM slack penalty C (MetaOptNet uses 0.1).
    svm_iterations: accelerated projected-gradient iterations before the active-set refinement.
    svm_exact: refine the active set and differentiate the KKT solution exactly (cost grows as
        (support size x ways)^3); false differentiates through the unrolled iterations instead.
    ridge_lambda: ridge regression's L2 penalty (MetaOptNet uses 50).
    scale: initial multiplier of the logits (learnt when learn_scale is true, as in the paper).
    learn_scale: learn the logit scale.
    """

    def __init__(
        self,
        base_learner: BaseLearner = "svm",
        svm_c: float = 0.1,
        svm_iterations: int = 50,
        svm_exact: bool = True,
        ridge_lambda: float = 50.0,
        scale: float = 1.0,
        learn_scale: bool = True,
    ):
        super().__init__()
        one_of("metaoptnet", "base_learner", base_learner, BaseLearner)
        for option, value in (("svm_c", svm_c), ("ridge_lambda", ridge_lambda), ("scale", scale)):
            positive("metaoptnet", option, value)
        for option, value in (("svm_exact", svm_exact), ("learn_scale", learn_scale)):
            flag("metaoptnet", option, value)
        if isinstance(svm_iterations, bool) or not isinstance(svm_iterations, int) or svm_iterations < 1:
            raise metareg.OptionError(f"metaoptnet: svm_iterations must be a positive integer, got {svm_iterations!r}")
        self.base_learner, self.svm_c, self.svm_iterations = base_learner, float(svm_c), svm_iterations
        self.svm_exact, self.ridge_lambda = svm_exact, float(ridge_lambda)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        n_support = episodes.support.shape[1]
        features = embed_real(self, *episode_images(episodes))  # padded slots: zero features
        with full_precision(features.device):  # the base learner's solves need float32 or better
            features = as_full(features)
            support, query = features[:, :n_support], features[:, n_support:]
            if self.base_learner == "ridge":
                targets = episodes.support_onehot(support.dtype) if episodes.padded else None
                scores = ridge_scores(support, episodes.support_labels, query, episodes.ways, self.ridge_lambda,
                                      targets)
            else:
                scores = crammer_singer_svm(
                    support, episodes.support_labels, query, episodes.ways,
                    c=self.svm_c, iterations=self.svm_iterations, exact=self.svm_exact,
                    support_mask=episodes.support_mask, way_mask=episodes.way_mask,
                )
            return episodes.mask_ways(self.scale * scores)

    # ------------------------------------------------------------------ prediction (metareg predict)
    # The fitted base learner is linear in the features: class weights W = S^T alpha, so the support
    # set is solved once and every later query batch costs one matrix product.

    def fit_support(self, support: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        features = as_full(self.embed(support.unsqueeze(0)))
        with full_precision(features.device):
            features = as_full(features)
            # Scores of unit vectors are the rows of W: scores(e_d) = e_d^T S^T alpha.
            basis = torch.eye(features.shape[-1], dtype=features.dtype, device=features.device).unsqueeze(0)
            if self.base_learner == "ridge":
                weights = ridge_scores(features, labels.unsqueeze(0), basis, ways, self.ridge_lambda)
            else:
                weights = crammer_singer_svm(features, labels.unsqueeze(0), basis, ways, c=self.svm_c,
                                             iterations=self.svm_iterations, exact=self.svm_exact)
        return {"weights": weights[0]}  # (D, ways)

    def predict_query(self, state: dict[str, torch.Tensor], query: torch.Tensor, ways: int) -> torch.Tensor:
        features = as_full(self.embed(query.unsqueeze(0))[0])
        with full_precision(features.device):
            return self.scale * (as_full(features) @ state["weights"].to(features.dtype))
