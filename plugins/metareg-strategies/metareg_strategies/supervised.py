"""The supervised baseline: a classifier over all training classes, nearest class mean at test time.

Chen et al. (2019, "A closer look at few-shot classification") and Tian et al. (2020,
"Rethinking few-shot image classification") showed this is the baseline to beat.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import metareg
from metareg_strategies.option_checks import one_of, positive
from metareg_strategies.protonet import Distance, PrototypicalNetworks


class Supervised(PrototypicalNetworks):
    """Train backbone + linear head on plain labelled batches of all training classes; evaluate
    few-shot episodes by nearest class mean of the support embeddings (the head is dropped).

    Evaluation, prediction and export are prototypical networks' (inherited); only training differs.

    distance: 'cosine' (cosine similarity to the class means, the usual choice for this baseline)
        or 'euclidean' (negative squared distance).
    temperature: evaluation logits are divided by this (only changes the loss scale, not accuracy).
    label_smoothing: the older spelling of the run setting label_smoothing (--label-smoothing), which
        applies to every strategy; kept so that configs setting it still run. Giving both, with different
        values, is refused.
    """

    train_batches: ClassVar[str] = "labelled"

    def __init__(
        self,
        distance: Distance = "cosine",
        temperature: float = 0.1,
        label_smoothing: float = 0.0,
    ):
        one_of("default", "distance", distance, Distance)
        positive("default", "temperature", temperature)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not (
            0 <= label_smoothing < 1
        ):
            raise metareg.OptionError(f"default: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        super().__init__(distance, float(temperature))
        self.label_smoothing = float(label_smoothing)

    def setup(self, backbone: nn.Module, task: metareg.TaskInfo) -> None:
        super().setup(backbone, task)
        if task.num_train_classes < 2:
            raise metareg.ConfigError(
                f"default: supervised training needs at least 2 training classes, got {task.num_train_classes}"
            )
        self.head = nn.Linear(task.feature_dim, task.num_train_classes)

    def labelled_loss(self, images: torch.Tensor, labels: torch.Tensor) -> metareg.StepOutput:
        logits = self.head(self.backbone(images))
        # self.label_smoothing: the run's setting, or this strategy's option when the run sets none.
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return metareg.StepOutput(loss, logits, labels)
