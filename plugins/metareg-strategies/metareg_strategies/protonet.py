"""Prototypical networks (Snell, Swersky and Zemel, 2017)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

import metareg
from metareg_strategies.masked import embed_real, episode_images
from metareg_strategies.option_checks import one_of, positive

Distance = Literal["euclidean", "cosine"]


def class_separation(query: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between an episode's prototypes over the mean squared distance from a query
    to its own class's prototype: how far apart the classes sit for their spread (higher separates better).
    Logged as ``train/separation`` and ``val/separation`` (:meth:`metareg.Strategy.log_metric`)."""
    with torch.no_grad():
        own = prototypes.gather(1, labels.unsqueeze(-1).expand(-1, -1, prototypes.shape[-1]))
        within = (query - own).pow(2).sum(-1).mean()
        b, ways = prototypes.shape[:2]
        between = torch.cdist(prototypes, prototypes).pow(2).sum() / (b * ways * (ways - 1))
        return between / within.clamp(min=1e-12)


class PrototypicalNetworks(metareg.Strategy):
    """Classify queries by distance to the mean support embedding of each class.

    distance: 'euclidean' (squared Euclidean, as in the paper) or 'cosine'.
    temperature: logits are divided by this; for cosine a value around 0.1 trains better.
    episodes_per_forward: episodes per backbone pass (training batch-norm statistics are taken over
        each pass); 0 chooses by device: on a GPU the whole meta-batch, on a CPU as many episodes as
        fit CPU_IMAGES_PER_FORWARD images (at least one).
    """

    # On a 2-core CPU (32 MB L3) the convolutions cost the same per image at any batch size, but batch
    # norm, ReLU and their backward passes are memory-bound: over 400 images per pass (80 MB of first-layer
    # activations) they took 2-6x longer per episode than over learn2learn's 100 (torch.profiler, bench/README.md),
    # and a 32-episode pass ran at 0.63x learn2learn's one-episode loop. About one 5w5s15q episode per pass
    # keeps them in cache.
    CPU_IMAGES_PER_FORWARD = 128
    # The support state's rows are one per class, each from that class's images alone, so a deployed
    # classifier enrols or removes a class without touching the others (metareg enroll).
    per_class_state = ("prototypes",)

    def __init__(self, distance: Distance = "euclidean", temperature: float = 1.0, episodes_per_forward: int = 0):
        super().__init__()
        self.distance = one_of("prototypicalnetworks", "distance", distance, Distance)
        self.temperature = positive("prototypicalnetworks", "temperature", temperature)
        if isinstance(episodes_per_forward, bool) or not isinstance(episodes_per_forward, int) \
                or episodes_per_forward < 0:
            raise metareg.OptionError("prototypicalnetworks: episodes_per_forward must be a whole number >= 0 "
                                      f"(0 chooses by device), got {episodes_per_forward!r}")
        self.episodes_per_forward = episodes_per_forward

    def chunk(self, images: torch.Tensor) -> int:
        """Episodes per backbone pass for ``(B, N, C, H, W)`` images."""
        if self.episodes_per_forward:
            return self.episodes_per_forward
        if images.device.type != "cpu":
            return images.shape[0]
        return max(1, self.CPU_IMAGES_PER_FORWARD // images.shape[1])

    def forward(self, episodes: metareg.EpisodeBatch) -> torch.Tensor:
        # Support and query through the backbone in one pass: one batch-norm batch, one kernel launch per layer.
        both, real = episode_images(episodes)
        chunk = self.chunk(both)
        masks = [None] * len(both.split(chunk)) if real is None else real.split(chunk)
        features = torch.cat([embed_real(self, part, m) for part, m in zip(both.split(chunk), masks, strict=True)])
        features = features.float()
        n_support = episodes.support.shape[1]
        support, query = features[:, :n_support], features[:, n_support:]
        if episodes.padded:  # padded support slots have zero one-hot rows: class means of real images only
            onehot = episodes.support_onehot(support.dtype)
            prototypes = (onehot.transpose(1, 2) @ support) / onehot.sum(1).clamp(min=1).unsqueeze(-1)
        else:
            prototypes = metareg.class_means(support, episodes.support_labels, episodes.ways)
        if self.distance == "cosine":
            logits = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        else:
            logits = -torch.cdist(query, prototypes).pow(2)
        if episodes.query_labels is not None and not getattr(episodes, "padded", False):
            cosine = self.distance == "cosine"
            self.log_metric("separation", class_separation(F.normalize(query, dim=-1) if cosine else query,
                                                           F.normalize(prototypes, dim=-1) if cosine else prototypes,
                                                           episodes.query_labels))
        return episodes.mask_ways(logits / self.temperature)

    # ------------------------------------------------------------------ prediction (metareg predict / export)
    # Prototypes depend on the support set only, so `metareg predict --cache` stores them and
    # later query batches never run the backbone on the support images again.

    def fit_support(self, support: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        features = self.embed(support.unsqueeze(0)).float()
        return {"prototypes": metareg.class_means(features, labels.unsqueeze(0), ways)[0]}

    def predict_query(self, state: dict[str, torch.Tensor], query: torch.Tensor, ways: int) -> torch.Tensor:
        return self.export_head().logits(self.embed(query.unsqueeze(0)).float()[0], state["prototypes"])

    def export_head(self) -> PrototypeHead:
        return PrototypeHead(self.distance, self.temperature)


class PrototypeHead(torch.nn.Module):
    """Nearest-prototype classifier on backbone features; TorchScript-compatible for `metareg export`."""

    def __init__(self, distance: str, temperature: float):
        super().__init__()
        self.cosine, self.temperature = distance == "cosine", float(temperature)

    def logits(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            scores = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).t()
        else:
            scores = -torch.cdist(query.unsqueeze(0), prototypes.unsqueeze(0)).pow(2)[0]
        return scores / self.temperature

    def forward(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        ways = int(labels.max()) + 1
        onehot = F.one_hot(labels, ways).to(support.dtype)  # (S, ways): uneven class counts are fine
        prototypes = (onehot.t() @ support) / onehot.sum(0).clamp(min=1).unsqueeze(1)
        return self.logits(query, prototypes)
