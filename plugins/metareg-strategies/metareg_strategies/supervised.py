"""The supervised baseline: a classifier over all training classes, nearest class mean at test time.

Chen et al. (2019, "A closer look at few-shot classification") and Tian et al. (2020,
"Rethinking few-shot image classification") showed this is the baseline to beat.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_strategies.protonet import PrototypeHead


class Supervised(metareg.Strategy):
    """Train backbone + linear head on plain labelled batches of all training classes; evaluate
    few-shot episodes by nearest class mean of the support embeddings (the head is dropped).

    distance: 'cosine' (cosine similarity to the class means, the usual choice for this baseline)
        or 'euclidean' (negative squared distance).
    temperature: evaluation logits are divided by this (only changes the loss scale, not accuracy).
    label_smoothing: label smoothing of the training cross-entropy.
    """

    train_batches: ClassVar[str] = "labelled"

    def __init__(
        self,
        distance: Literal["cosine", "euclidean"] = "cosine",
        temperature: float = 0.1,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if distance not in ("cosine", "euclidean"):
            raise metareg.OptionError(f"default: distance must be 'cosine' or 'euclidean', got {distance!r}")
        if not temperature > 0:
            raise metareg.OptionError(f"default: temperature must be positive, got {temperature!r}")
        if not 0 <= label_smoothing < 1:
            raise metareg.OptionError(f"default: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.distance, self.temperature, self.label_smoothing = distance, float(temperature), float(label_smoothing)

    def setup(self, backbone: nn.Module, task: metareg.TaskInfo) -> None:
        super().setup(backbone, task)
        if task.num_train_classes < 2:
            raise metareg.ConfigError(
                f"default: supervised training needs at least 2 training classes, got {task.num_train_classes}"
            )
        self.head = nn.Linear(task.feature_dim, task.num_train_classes)

    def labelled_loss(self, images: torch.Tensor, labels: torch.Tensor) -> metareg.StepOutput:
        logits = self.head(self.backbone(images))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return metareg.StepOutput(loss, logits, labels)

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        n_support = episodes.support.shape[1]
        features = self.embed(torch.cat([episodes.support, episodes.query], 1)).float()
        support, query = features[:, :n_support], features[:, n_support:]
        means = metareg.class_means(support, episodes.support_labels, episodes.ways)
        if self.distance == "cosine":
            logits = F.normalize(query, dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2)
        else:
            logits = -torch.cdist(query, means).pow(2)
        return logits / self.temperature

    # ------------------------------------------------------------------ prediction (metareg predict / export)
    # Evaluation is a nearest-class-mean classifier, exactly prototypical networks' head.

    def fit_support(self, support: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        features = self.embed(support.unsqueeze(0)).float()
        return {"prototypes": metareg.class_means(features, labels.unsqueeze(0), ways)[0]}

    def predict_query(self, state: dict[str, torch.Tensor], query: torch.Tensor, ways: int) -> torch.Tensor:
        return self.export_head().logits(self.embed(query.unsqueeze(0)).float()[0], state["prototypes"])

    def export_head(self) -> PrototypeHead:
        return PrototypeHead(self.distance, self.temperature)
