"""What a dataset tells the core about its images: the :class:`DatasetInfo` record.

A dataset factory returns a :class:`metareg.FewShotDataset` whose ``info`` is a
``DatasetInfo`` (a plain dict is converted, and a key that is not a field is refused). The
record travels into every checkpoint and export (``meta["data"]["info"]``), so that
``metareg predict`` prepares new images the way the training images were prepared, and so
that the ImageNet warning is given again when a checkpoint is evaluated.

Saved form: a flat dict of the fields that differ from their defaults plus ``details``
(``dict(info)``; the record is a read-only mapping over it, as the plain dicts before it
were). :meth:`DatasetInfo.from_saved` reads it back, from old checkpoints too.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from metareg.errors import DataError
from metareg.images import RESAMPLE

CROPS = ("center", "none")


@dataclass(frozen=True, eq=False)  # equality and hashing are the mapping's: the saved form
class DatasetInfo(Mapping):
    """Facts about a dataset's images that the core reads.

    invert: the dataset stores ``255 - pixel`` of its files (Omniglot's black-on-white PNGs are
        stored as bright ink on dark), so new images from files are inverted before prediction.
    resample: the PIL filter the dataset resized its images with (``"box"`` for Omniglot), one of
        nearest, box, bilinear, hamming, bicubic, lanczos; prediction and exports resize with it.
    crop: ``"center"`` (non-square images are cut to their centre square) or ``"none"`` (stretched).
    imagenet_derived: the classes are ImageNet classes (miniImageNet, tieredImageNet): the core warns
        when a backbone's weights were pretrained on ImageNet, because test accuracy would be inflated.
    note: one line on how the data departs from the standard benchmark, for the reader.
    details: anything else worth recording (paths, splits, generation settings): plain data only
        (numbers, strings, lists, dicts), as it is saved in checkpoints.
    """

    invert: bool = False
    resample: str = "bilinear"
    crop: Literal["center", "none"] = "center"
    imagenet_derived: bool = False
    note: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("invert", "imagenet_derived"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"DatasetInfo.{name} must be True or False, got {getattr(self, name)!r}")
        if self.resample not in RESAMPLE:
            raise DataError(f"DatasetInfo.resample {self.resample!r} is not a PIL filter; use one of "
                            f"{', '.join(RESAMPLE)}")
        if self.crop not in CROPS:
            raise DataError(f"DatasetInfo.crop {self.crop!r} is not one of {', '.join(CROPS)}")
        if self.note is not None and not isinstance(self.note, str):
            raise DataError(f"DatasetInfo.note must be a string, got {type(self.note).__name__}")
        if not isinstance(self.details, Mapping):
            raise DataError(f"DatasetInfo.details must be a mapping, got {type(self.details).__name__}")
        clash = sorted(set(self.details) & set(_FIELDS))
        if clash:
            raise DataError(f"DatasetInfo.details key {clash[0]!r} is a field of its own; "
                            f"pass DatasetInfo({clash[0]}=...) instead")
        # A copy, not a MappingProxyType: the dataset travels to spawned processes (ddp_spawn), which pickle it.
        object.__setattr__(self, "details", dict(self.details))

    # ------------------------------------------------------------------ reading
    @classmethod
    def of(cls, value: DatasetInfo | Mapping[str, Any] | None, dataset: str = "dataset") -> DatasetInfo:
        """What a dataset gave as its ``info``: a record, or a dict whose keys must be fields."""
        if isinstance(value, DatasetInfo):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise DataError(f"{dataset}: info must be a metareg.DatasetInfo, got {type(value).__name__}")
        unknown = [k for k in value if k not in _FIELDS]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), _FIELDS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"{dataset}: info key {key!r} is not a DatasetInfo field ({hint}fields: "
                            f"{', '.join(_FIELDS)}); put dataset-specific facts in details={{...}}")
        try:
            return cls(**value)
        except DataError as exc:
            raise DataError(f"{dataset}: {exc}") from None

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> DatasetInfo:
        """The record a checkpoint's flat ``info`` dict describes; keys that are not fields become ``details``.

        Lenient, as prediction always was: an unknown filter reads as bilinear, a crop other than
        ``"none"`` as centre, so that a checkpoint written by any version still loads.
        """
        if isinstance(saved, DatasetInfo):
            return saved
        saved = saved if isinstance(saved, Mapping) else {}
        resample = str(saved.get("resample", "bilinear")).lower()
        note = saved.get("note")
        return cls(
            invert=bool(saved.get("invert", False)),
            resample=resample if resample in RESAMPLE else "bilinear",
            crop="none" if str(saved.get("crop", "center")).lower() == "none" else "center",
            imagenet_derived=bool(saved.get("imagenet_derived", False)),
            note=None if note is None else str(note),
            details={k: v for k, v in saved.items() if k not in _FIELDS and k != "details"},
        )

    # ------------------------------------------------------------------ the saved form, as a mapping
    def _flat(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "details" and getattr(self, f.name) != f.default}
        return {**self.details, **out}

    def __getitem__(self, key: str) -> Any:
        return self._flat()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat())

    def __len__(self) -> int:
        return len(self._flat())


_FIELDS = [f.name for f in fields(DatasetInfo)]


def saved_info(meta: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` a checkpoint's or export's metareg section holds (``meta["data"]["info"]``)."""
    data = meta.get("data") if isinstance(meta, Mapping) else None
    return DatasetInfo.from_saved(data.get("info") if isinstance(data, Mapping) else None)
