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
What the dataset did is read from the checkpoint (the dataset's ``FewShotDataset.info``,
saved under ``meta["data"]["info"]``):

- ``info["invert"]`` (bool, default False): the dataset stored ``255 - pixel`` of its
  files (Omniglot PNGs are black on white, metareg stores ink as 255);
- ``info["resample"]`` (PIL filter name, default ``"bilinear"``; ``"box"`` for omniglot);
- ``info["crop"]`` (``"center"``, the default, or ``"none"`` to stretch non-square images).

``invert`` can be overridden (``--invert/--no-invert``).

Every input is checked (folders, class counts, every image decoded) before any
model work starts; problems raise :class:`metareg.DataError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metareg.dataset_info import saved_info
from metareg.errors import CheckpointError, DataError, OptionError
from metareg.images import IMAGE_SUFFIXES, open_image, to_square_uint8
from metareg.images import is_image_file as _is_image_file

CACHE_FORMAT = "metareg-support-cache"
CACHE_VERSION = 1


# ---------------------------------------------------------------------------- inputs


def _images_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if _is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.relative_to(folder).as_posix())


def read_support_folder(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{class name: image files}`` from ``ROOT/<class>/<image>`` (classes sorted by name).

    Counts per class may differ. Refuses a missing folder, loose images beside the
    class folders, an empty class folder and fewer than two classes.
    """
    root = Path(root)
    layout = "a folder with one subfolder of images per class: SUPPORT/<class>/<image>"
    if not root.exists():
        raise DataError(f"support folder {str(root)!r} does not exist; pass {layout}")
    if not root.is_dir():
        raise DataError(f"support path {str(root)!r} is a file, not a folder; pass {layout}")
    loose = sorted(p.name for p in root.iterdir() if _is_image_file(p))
    if loose:
        raise DataError(
            f"support folder {str(root)!r} has images directly inside it ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}); move each image into the subfolder of its class: {layout}"
        )
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    classes = {}
    for d in folders:
        files = _images_under(d)
        if not files:
            raise DataError(
                f"support class folder {str(d)!r} has no images (looked for {', '.join(IMAGE_SUFFIXES)}); "
                "add at least one image of the class or remove the folder"
            )
        classes[d.name] = files
    _check_class_count(classes, f"support folder {str(root)!r}")
    return classes


def _check_class_count(classes: Mapping[str, Any], where: str) -> None:
    if len(classes) < 2:
        found = f" ({', '.join(map(repr, classes))})" if classes else ""
        raise DataError(
            f"{where} has {len(classes)} class{'' if len(classes) == 1 else 'es'}{found}; few-shot prediction "
            "needs at least 2 classes to choose between: add a subfolder of images for each other class"
        )


def collect_queries(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Query image files from files and folders (folders are searched recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise DataError(f"query path {str(p)!r} does not exist; pass image files or folders of images")
        if p.is_dir():
            files = _images_under(p)
            if not files:
                raise DataError(f"query folder {str(p)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
            out.extend(files)
        else:
            out.append(p)
    if not out:
        raise DataError("no query images given; pass image files or folders of images")
    return out


def _tensor_to_uint8(x: torch.Tensor, channels: int, size: int, name: str, resample: str, crop: str) -> torch.Tensor:
    """A tensor image goes through PIL like a file, so it is resized exactly as files are."""
    from PIL import Image

    x = torch.as_tensor(x).detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3, 4):
        raise DataError(f"{name}: an image tensor must be (H, W) or (C, H, W) with 1, 3 or 4 channels, "
                        f"got shape {tuple(x.shape)}")
    if x.is_floating_point():
        x = (x.float().clamp(0, 1) * 255).round()
    x = x.to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(x[:, :, 0] if x.shape[2] == 1 else x)  # L, RGB or RGBA
    return to_square_uint8(image, channels, size, resample, crop, name)


def load_image(item: Any, channels: int, image_size: int, name: str | None = None,
               resample: str = "bilinear", crop: str = "center") -> torch.Tensor:
    """One image (a path, a PIL image, or a tensor/array in [0, 1] or uint8) as uint8 ``(C, S, S)``."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise DataError(f"image {str(path)!r} does not exist")
        return to_square_uint8(open_image(path), channels, image_size, resample, crop, str(path))
    if isinstance(item, Image.Image):
        return to_square_uint8(item, channels, image_size, resample, crop, name or "image")
    if isinstance(item, torch.Tensor) or hasattr(item, "__array__"):
        return _tensor_to_uint8(torch.as_tensor(item), channels, image_size, name or "image", resample, crop)
    raise DataError(f"{name or 'image'}: cannot use a {type(item).__name__} as an image; "
                    "pass a file path, a PIL image or a tensor")


def _describe(item: Any, index: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__} #{index}>"


def _fingerprint(item: Any) -> str:
    """What identifies a support item for the cache: a file's path, size and modification time."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        st = Path(item).stat()
        return f"file:{Path(item).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.blake2b(digest_size=16)
    if isinstance(item, Image.Image):
        h.update(f"{item.mode}{item.size}".encode())
        h.update(item.tobytes())
    else:
        t = torch.as_tensor(item).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "data:" + h.hexdigest()


def _weights_digest(*modules) -> str:
    h = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, value in module.state_dict().items():
            h.update(name.encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Prediction:
    """One query's answer: the predicted class and the probability of every support class."""

    label: str
    probabilities: dict[str, float]
    source: str | None = None  # the file path, or a placeholder for in-memory images

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
        self.fitted_from_cache = False

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

    # ------------------------------------------------------------------ preparation
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
        names = names or [_describe(x, i) for i, x in enumerate(items)]
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
        classes, items = _support_items(support)
        labels = torch.tensor([c for c, xs in enumerate(items.values()) for _ in xs], dtype=torch.long)
        flat = [x for xs in items.values() for x in xs]
        key = self._cache_key(classes, items) if cache is not None else None
        if cache is not None:
            state = _read_cache(Path(cache), key, classes)
            if state is not None:
                self.classes, self.fitted_from_cache = classes, True
                self.state = {k: v.to(self.device) for k, v in state.items()}
                return self
        images = self.load_images(flat)  # every image decoded before any model work
        with self._grad():
            state = self.strategy.fit_support(self.prepare(images), labels.to(self.device), len(classes))
        self.state = {k: v.detach() for k, v in state.items()}
        self.classes, self.fitted_from_cache = classes, False
        if cache is not None:
            _write_cache(Path(cache), key, classes, self.state)
        return self

    def _cache_key(self, classes: list[str], items: Mapping[str, Sequence[Any]]) -> str:
        h = hashlib.blake2b(digest_size=20)
        if self.digest is None:  # the model file's content, hashed only when a cache is used
            self.digest = file_digest(self.source) if self.source else _weights_digest(self.strategy, self.transform)
        parts = [CACHE_FORMAT, CACHE_VERSION, self.digest, self.strategy_name,
                 self.channels, self.image_size, self.invert, self.resample, self.crop, json.dumps(classes)]
        h.update(repr(parts).encode())
        for name, xs in items.items():
            for x in xs:
                h.update(f"{name}\0{_fingerprint(x)}\n".encode())
        return h.hexdigest()

    def predict_logits(self, images: Sequence[Any] | torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """Logits ``(N, classes)`` for images (paths, PIL images, tensors, or a uint8 batch ``(N, C, S, S)``)."""
        if self.state is None or self.classes is None:
            raise DataError("call fit(support) before predict(): the classifier has no support set yet")
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            ready = images.dtype == torch.uint8 and tuple(images.shape[1:]) == (self.channels, self.image_size,
                                                                                 self.image_size)
            batch = images if ready else self.load_images(list(images))
        else:
            batch = self.load_images(_expand(images))
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
        items = _expand(images) if not (isinstance(images, torch.Tensor) and images.dim() == 4) else list(images)
        probs = self.predict_proba(items, batch_size=batch_size)
        return [
            Prediction(self.classes[int(p.argmax())], {c: float(v) for c, v in zip(self.classes, p, strict=True)},
                       _describe(item, i))
            for i, (item, p) in enumerate(zip(items, probs, strict=True))
        ]


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


def _expand(images) -> list[Any]:
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    out = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            p = Path(item)
            if p.is_dir():
                out.extend(collect_queries([p]))
                continue
            if not p.exists():
                raise DataError(f"query path {str(p)!r} does not exist; pass image files or folders of images")
        out.append(item)
    return out


def _support_items(support) -> tuple[list[str], dict[str, list[Any]]]:
    if isinstance(support, (str, os.PathLike)):
        items: dict[str, list[Any]] = dict(read_support_folder(support))
    elif isinstance(support, Mapping):
        items = {}
        for name, xs in support.items():
            if isinstance(xs, (str, os.PathLike)) or not isinstance(xs, Sequence) and not hasattr(xs, "__iter__"):
                xs = [xs]
            xs = list(xs)
            if not xs:
                raise DataError(f"support class {str(name)!r} has no images; give at least one image per class")
            items[str(name)] = xs
        _check_class_count(items, "support set")
    else:
        raise DataError(f"support must be a folder path or a mapping {{class name: [images]}}, "
                        f"got {type(support).__name__}")
    return list(items), items


# ---------------------------------------------------------------------------- the support cache


def _read_cache(path: Path, key: str, classes: list[str]) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError("not a metareg support cache")
            if meta.get("key") != key or json.loads(meta.get("classes", "[]")) != classes:
                return None  # another support set, model or preparation: recompute
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        warnings.warn(f"metareg: support cache {str(path)!r} is unreadable ({exc}); recomputing it",
                      RuntimeWarning, stacklevel=3)
        return None


def _write_cache(path: Path, key: str, classes: list[str], state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from metareg.files import atomic_write

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {"format": CACHE_FORMAT, "version": str(CACHE_VERSION), "key": key, "classes": json.dumps(classes)}
    atomic_write(path, save(tensors, metadata=meta))
