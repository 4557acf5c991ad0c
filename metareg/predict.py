"""Few-shot prediction for deployment: a support set of labelled images, answers on new images.

:class:`FewShotClassifier` wraps a trained model (a ``metareg run`` checkpoint or a
``metareg export --format safetensors`` file). ``fit(support)`` prepares the support
set once through the strategy's :meth:`metareg.Strategy.fit_support` (prototypes for
prototypical networks; the support images themselves for strategies that adapt at
prediction time), and ``predict(images)`` answers query batches with
:meth:`metareg.Strategy.predict_query`, which defaults to the strategy's own
``forward`` on a one-episode batch, so every strategy predicts exactly as it is
evaluated.

Images go through the same preparation as the training data: converted to the
model's channels (``L`` or ``RGB``, transparency flattened onto white), cropped to
their centre square when not square, resized to the model's ``image_size``, scaled to
``[0, 1]``, inverted when the training data stored ink as bright pixels on dark
background while files show dark strokes on white, then ``transform.evaluate``.
What the dataset did is read from the checkpoint: the dataset's :class:`metareg.DatasetInfo`
(``invert``, ``resample``, ``crop``), saved under ``meta["data"]["info"]``. ``invert`` can be
overridden (``--invert/--no-invert``).

Every input is checked (folders, class counts, every image decoded) before any
model work starts (:mod:`metareg.predict_inputs`); problems raise :class:`metareg.DataError`
naming the file. The support state can be cached (:mod:`metareg.support_cache`).

Deployment: ``save(path)`` / ``load(path)`` keep a fitted classifier in one ``.fewshot`` file
(:mod:`metareg.fewshot_file`), with an open-set threshold (:mod:`metareg.open_set`: a query far
from every class is ``unknown``); ``add_class`` / ``remove_class`` change its classes without
retraining (:mod:`metareg.enroll`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metareg.dataset_info import saved_info
from metareg.errors import CheckpointError, DataError, OptionError
from metareg.predict_inputs import (
    collect_queries,
    describe_item,
    expand_queries,
    load_image,
    read_support_folder,
    support_items,
)
from metareg.support_cache import cache_key, file_digest, read_cache, weights_digest, write_cache

# What `from metareg.predict import ...` offers: the classifier, and the input readers the CLI and users call.
__all__ = ["FewShotClassifier", "Prediction", "collect_queries", "load_image", "read_support_folder"]

# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Prediction:
    """One query's answer: the predicted class and the probability of every support class."""

    label: str
    probabilities: dict[str, float]
    source: str | None = None  # the file path, or a placeholder for in-memory images
    # Open set (a .fewshot file with calibration): the query is far from every class. `label` stays the
    # nearest class; the CLI shows "unknown".
    unknown: bool = False

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]


# ---------------------------------------------------------------------------- the classifier


class FewShotClassifier:
    """Predict the classes of new images from a handful of labelled support images.

    >>> clf = metareg.FewShotClassifier.from_checkpoint("runs/x/checkpoints/last.ckpt")
    >>> clf.fit("support/")                   # support/<class>/<image>, or {"cat": [paths...], ...}
    >>> for p in clf.predict(["q1.png", "queries/"]):
    ...     print(p.source, p.label, p.confidence)
    """

    def __init__(self, model, *, device: str | torch.device = "cpu", invert: bool | None = None,
                 batch_size: int = 64, digest: str | None = None, source: str | None = None):
        if batch_size < 1:
            raise OptionError(f"batch_size must be a positive integer, got {batch_size}")
        self.model = model
        self.device = _device(device)
        self.strategy = model.strategy.to(self.device).eval()
        self.transform = model.transform.to(self.device).eval()
        self.channels, self.image_size = int(model.task.channels), int(model.task.image_size)
        info = saved_info(model.meta)
        self.invert = info.invert if invert is None else bool(invert)
        self.resample, self.crop = info.resample, info.crop
        self.batch_size = int(batch_size)
        self.digest, self.source = digest, source
        self.classes: list[str] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.counts: list[int] | None = None  # support images per class
        self.fitted_from_cache = False
        # Kept by fit() for strategies that refit on enrolment (metareg.enroll); stored in .fewshot files.
        self.support_images: torch.Tensor | None = None
        self.support_labels: torch.Tensor | None = None
        self.open_set: dict[str, Any] | None = None  # metareg.open_set calibration, from a .fewshot file
        self.provenance: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                        invert: bool | None = None, batch_size: int = 64) -> FewShotClassifier:
        """Load a ``metareg run`` checkpoint (``.ckpt``) or a ``metareg export --format safetensors`` file.

        invert: flip pixel values (``1 - x``) after loading; ``None`` uses what the training data
            recorded (datasets built from dark-on-light files such as Omniglot store ink as bright pixels).
        """
        _device(device)  # a bad device fails before the checkpoint is read
        path = Path(path)
        if path.is_dir():
            hint = next((str(p) for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()), None)
            raise CheckpointError(f"checkpoint {str(path)!r} is a folder; pass a checkpoint file"
                                  + (f", e.g. {hint}" if hint else " such as RUN_DIR/checkpoints/last.ckpt"))
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
        from metareg.export import is_safetensors, load_safetensors_export

        if is_safetensors(path):
            model = load_safetensors_export(path)
        else:
            from metareg.model_loading import load_model

            model = load_model(path)
        return cls(model, device=device, invert=invert, batch_size=batch_size, source=os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
             batch_size: int = 64) -> FewShotClassifier:
        """A classifier from a ``.fewshot`` file (``metareg export --support``), support set included."""
        from metareg.fewshot_file import load

        _device(device)
        return load(path, device=device, batch_size=batch_size)

    def save(self, path: str | os.PathLike, *, inputs=(), checkpoint: str | os.PathLike | None = None) -> Path:
        """Write this fitted classifier as one ``.fewshot`` file, atomically (:mod:`metareg.fewshot_file`)."""
        from metareg.fewshot_file import write

        return write(self, path, inputs=inputs, checkpoint=checkpoint)

    def add_class(self, name: str, images) -> str:
        """Enrol a new class from its images without retraining; returns ``"incremental"`` or ``"refit"``."""
        from metareg.enroll import add_class

        return add_class(self, name, images)

    def remove_class(self, name: str) -> str:
        """Forget a class; returns ``"incremental"`` or ``"refit"``."""
        from metareg.enroll import remove_class

        return remove_class(self, name)

    # ------------------------------------------------------------------ preparation
    @property
    def incremental(self) -> bool:
        """Whether the strategy's support state is one row per class computed from that class alone
        (``per_class_state``, e.g. prototypes), so classes are enrolled without touching the others."""
        keys = tuple(getattr(self.strategy, "per_class_state", ()))
        return bool(keys) and (self.state is None or set(self.state) == set(keys))

    @property
    def strategy_name(self) -> str:
        return getattr(self.model.config, "strategy", type(self.strategy).__name__)

    @property
    def caches_features(self) -> bool:
        """Whether the strategy computes its support state ahead (so a cache saves backbone passes)."""
        from metareg.strategy import Strategy

        return type(self.strategy).fit_support is not Strategy.fit_support

    @property
    def transductive(self) -> bool:
        """Batch norm without running statistics (MAML's): each query batch is normalised with its own
        statistics, so answers depend on which queries are predicted together (and on batch_size)."""
        return bool(getattr(self.strategy, "transductive", False)) or any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None
            for m in self.strategy.modules())

    def load_images(self, items: Sequence[Any], names: Sequence[str] | None = None) -> torch.Tensor:
        """Decode and resize every item to uint8 ``(N, C, S, S)``; the first bad one raises DataError."""
        names = names or [describe_item(x, i) for i, x in enumerate(items)]
        out = torch.empty(len(items), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        for i, (item, name) in enumerate(zip(items, names, strict=True)):
            out[i] = load_image(item, self.channels, self.image_size, name, self.resample, self.crop)
        return out

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, S, S)`` -> the float batch the strategy sees (device, [0,1], invert, evaluate)."""
        x = images.to(self.device).float().div_(255)
        if self.invert:
            x = 1.0 - x
        return self.transform.evaluate(x)

    def _grad(self):
        return torch.enable_grad() if getattr(self.strategy, "needs_grad_at_eval", False) else torch.no_grad()

    # ------------------------------------------------------------------ fit / predict
    def fit(self, support: str | os.PathLike | Mapping[str, Sequence[Any]], *,
            cache: str | os.PathLike | None = None) -> FewShotClassifier:
        """Prepare the support set: a folder ``<class>/<image>`` or ``{class name: [images]}``.

        cache: a file for the strategy's support state; reused when the support files (path,
        size, modification time), the model and the preparation are unchanged, rebuilt otherwise.
        """
        classes, items = support_items(support)
        labels = torch.tensor([c for c, xs in enumerate(items.values()) for _ in xs], dtype=torch.long)
        flat = [x for xs in items.values() for x in xs]
        key = self._cache_key(classes, items) if cache is not None else None
        self.counts = [len(xs) for xs in items.values()]
        if cache is not None:
            state = read_cache(Path(cache), key, classes)
            if state is not None:
                self.classes, self.fitted_from_cache = classes, True
                self.state = {k: v.to(self.device) for k, v in state.items()}
                return self
        images = self.load_images(flat)  # every image decoded before any model work
        with self._grad():
            state = self.strategy.fit_support(self.prepare(images), labels.to(self.device), len(classes))
        self.state = {k: v.detach() for k, v in state.items()}
        self.classes, self.fitted_from_cache = classes, False
        kept = not self.incremental  # enrolment refits on them
        self.support_images, self.support_labels = (images, labels) if kept else (None, None)
        if cache is not None:
            write_cache(Path(cache), key, classes, self.state)
        return self

    def _cache_key(self, classes: list[str], items: Mapping[str, Sequence[Any]]) -> str:
        if self.digest is None:  # the model file's content, hashed only when a cache is used
            self.digest = file_digest(self.source) if self.source else weights_digest(self.strategy, self.transform)
        settings = [self.strategy_name, self.channels, self.image_size, self.invert, self.resample, self.crop]
        return cache_key(self.digest, settings, classes, items)

    def predict_logits(self, images: Sequence[Any] | torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Logits ``(N, classes)`` for images (paths, PIL images, tensors, or a uint8 batch ``(N, C, S, S)``)."""
        if self.state is None or self.classes is None:
            raise DataError("call fit(support) before predict(): the classifier has no support set yet")
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            ready = images.dtype == torch.uint8 and tuple(images.shape[1:]) == (self.channels, self.image_size,
                                                                                 self.image_size)
            batch = images if ready else self.load_images(list(images))
        else:
            batch = self.load_images(expand_queries(images))
        size = batch_size or self.batch_size
        ways = len(self.classes)
        out = []
        with self._grad():
            for start in range(0, len(batch), size):
                query = self.prepare(batch[start:start + size])
                out.append(self.strategy.predict_query(self.state, query, ways).detach().float().cpu())
        return torch.cat(out) if out else torch.empty(0, ways)

    def predict_proba(self, images, *, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities ``(N, classes)``, columns in the order of :attr:`classes`."""
        return self.predict_logits(images, batch_size=batch_size).softmax(-1)

    def predict(self, images, *, batch_size: int | None = None) -> list[Prediction]:
        """One :class:`Prediction` per image; folders among ``images`` expand to their image files."""
        items = expand_queries(images) if not (isinstance(images, torch.Tensor) and images.dim() == 4) else list(images)
        logits = self.predict_logits(items, batch_size=batch_size)
        unknown = self.unknown(logits)
        return [
            Prediction(self.classes[int(p.argmax())], {c: float(v) for c, v in zip(self.classes, p, strict=True)},
                       describe_item(item, i), bool(u))
            for i, (item, p, u) in enumerate(zip(items, logits.softmax(-1), unknown, strict=True))
        ]

    def unknown(self, logits: torch.Tensor) -> torch.Tensor:
        """Which rows of ``logits`` the open-set calibration rejects (all False without one)."""
        from metareg.open_set import rejected

        return rejected(self.open_set, logits)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device {device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return dev
