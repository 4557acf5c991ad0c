"""``omniglot``: the official Omniglot zips (Lake et al., Science 2015), or their extracted folders.

Images are decoded once, resized to ``image_size`` with a box filter, inverted so
that ink is bright (255) on black (0) -- the ``glyphs`` convention -- and cached as
an ``.npz`` keyed by the source file and the size; later loads take well under a
second.

Splits
------
``vinyals`` (default): all 1,623 characters (background + evaluation) pooled and
split at random by ``seed`` into 1,028 train / 172 validation / 423 test characters
(Vinyals et al. 2016 with the validation split of Snell et al. 2017). With only
``images_background`` present, its 964 characters are split in the same
proportions (about 611 / 102 / 251); ``info.note`` says so.

``lake``: Lake's protocol, alphabets stay whole: test = the 20 evaluation
alphabets; validation = ``validation_alphabets`` background alphabets chosen by
``seed``; train = the rest of the background alphabets. With only
``images_background`` present, its 30 alphabets are split 20 / 5 / 5 by ``seed``
(``validation_alphabets`` for validation, as many again for test); ``info.note``
says so.

``rotations=true`` adds the rotations by 90, 180 and 270 degrees of every character
as new classes of the same split (Santoro et al. 2016), so the class count grows 4x.
"""
from __future__ import annotations

import io
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

import metareg
from metareg_datasets import cache

FORMAT_VERSION = 1
SETS = ("images_background", "images_evaluation")
URLS = {
    name: [
        f"https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip",
        f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip",
    ]
    for name in SETS
}
# Published digests of the official zips. A download is accepted if it matches any of
# them. md5: the values torchvision pins for these exact URLs (the only published
# digests we know of); sha256 of images_background.zip: the copy in the project's
# shared data folder (SHA256SUMS there). No SHA-256 of images_evaluation.zip is
# known offline, so it is verified by md5 alone.
CHECKSUMS: dict[str, list[dict[str, str]]] = {
    "images_background": [
        {"sha256": "41b581c76a52d47877f435d884947c1c91bf223a7ac8457e46b4baab84b7009b"},
        {"md5": "68d2efa1b9178cc56df9314c21c6e718"},
    ],
    "images_evaluation": [{"md5": "6b91aef0f799c5bb55b94e3f2daec811"}],
}
VINYALS = (1028, 172, 423)


def default_root() -> Path:
    return cache.cache_dir() / "omniglot"


def _find(root: Path, name: str) -> Path | None:
    """The zip or extracted folder of set ``name`` under ``root`` (or ``root`` itself)."""
    if root.is_file():
        if root.name == f"{name}.zip":
            return root
        root = root.parent
    for candidate in (root / f"{name}.zip", root / name, root / "omniglot-py" / name, root / "python" / f"{name}.zip"):
        if candidate.is_file() or (candidate.is_dir() and any(candidate.iterdir())):
            return candidate
    return None


def fetch(root: Path, name: str) -> Path:
    """Download ``name``.zip from the official repository into ``root``, checksum-verified."""
    what = f"omniglot {name}.zip"
    return cache.download(
        URLS[name], root / f"{name}.zip", lambda tmp: cache.verify_any(tmp, CHECKSUMS[name], what=what), what=what,
        hint=f"Put the official {name}.zip (github.com/brendenlake/omniglot, folder python/) in {root} "
             "or pass root=FOLDER that holds it.",
    )


def _entries(source: Path):
    """Sorted (alphabet, character, reader) for every PNG of one set, zip or folder."""
    if source.is_file():
        zf = cache.open_zip(source, what="omniglot")
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".png"))
        out = []
        for n in names:
            parts = n.split("/")
            if len(parts) < 3:
                continue
            out.append((parts[-3], parts[-2], n, lambda n=n: zf.read(n)))
        return out, zf
    files = sorted(source.glob("*/*/*.png"))
    return [(p.parent.parent.name, p.parent.name, str(p), p.read_bytes) for p in files], None


def _decode(source: Path, image_size: int) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    entries, zf = _entries(source)
    if not entries:
        raise metareg.DataError(
            f"omniglot: no PNG files under {source}; expected <set>/<Alphabet>/<characterNN>/*.png")
    try:
        images = np.empty((len(entries), 1, image_size, image_size), np.uint8)
        class_names: list[str] = []
        index: dict[str, int] = {}
        labels = np.empty(len(entries), np.int32)
        for i, (alphabet, character, where, read) in enumerate(entries):
            try:
                data = read()
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
                # a bad CRC, a truncated or encrypted member: the zip itself is damaged
                raise metareg.DataError(
                    f"omniglot: {source} is damaged: {where} cannot be read ({type(exc).__name__}: {exc}); "
                    f"delete {source.name} and get it again (download=true fetches the official zip)"
                ) from None
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im = im.convert("L")
                    if im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.BOX)
                    images[i, 0] = 255 - np.asarray(im)  # strokes are black in the files
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as exc:
                raise metareg.DataError(f"omniglot: cannot decode image {where} in {source}: {exc}; delete "
                                        f"{source.name} and get it again") from None
            key = f"{alphabet}/{character}"
            if key not in index:
                index[key] = len(class_names)
                class_names.append(key)
            labels[i] = index[key]
    finally:
        if zf is not None:
            zf.close()
    return {"images": images, "labels": labels, "classes": np.array(class_names)}


def load_set(source: Path, image_size: int) -> dict[str, np.ndarray]:
    """Decoded images of one set (cached as npz keyed by the source file and the size)."""
    source = Path(source).resolve()
    st = source.stat()
    key = cache.options_key(FORMAT_VERSION, str(source), st.st_size, st.st_mtime_ns, image_size)
    stem = source.name.removesuffix(".zip")
    path = cache.cache_dir() / f"omniglot-v{FORMAT_VERSION}-{stem}-{image_size}px-{key}.npz"
    arrays = cache.load_npz(path, ("images", "labels", "classes"))
    if arrays is None:
        arrays = _decode(source, image_size)
        cache.save_npz(path, **arrays)
    return arrays


def omniglot(
    *,
    root: str | None = None,
    split: Literal["vinyals", "lake"] = "vinyals",
    rotations: bool = False,
    image_size: int = 28,
    seed: int = 0,
    validation_alphabets: int = 5,
    download: bool = False,
) -> metareg.FewShotDataset:
    """Omniglot handwritten characters (1,623 classes, 20 drawings each); white ink on black.

    root: folder holding images_background.zip / images_evaluation.zip (or the extracted folders),
        or the path of images_background.zip itself (default: the metareg cache folder, omniglot/).
    split: vinyals = all characters split at random 1028/172/423 by seed; lake = background alphabets
        for train/validation, evaluation alphabets for test.
    rotations: add 90/180/270-degree rotations of every character as new classes (4x classes).
    image_size: side of the square images in pixels (the files are 105x105).
    seed: seed of the class split (vinyals) or of the validation alphabets (lake).
    validation_alphabets: lake split: background alphabets held out for validation.
    download: fetch missing zips from github.com/brendenlake/omniglot, checksum-verified.
    """
    import torch

    if not 4 <= image_size <= 105:
        raise metareg.OptionError(f"omniglot: image_size must be between 4 and 105 (the drawings are 105x105), "
                                  f"got {image_size}")
    if not 1 <= validation_alphabets <= 10:
        raise metareg.OptionError(
            f"omniglot: validation_alphabets must be between 1 and 10, got {validation_alphabets}")
    base = Path(root).expanduser() if root else default_root()
    sources = {name: _find(base, name) for name in SETS}
    for name in SETS:
        if sources[name] is None and download:
            folder = base.parent if base.is_file() else base
            folder.mkdir(parents=True, exist_ok=True)
            sources[name] = fetch(folder, name)
    if sources["images_background"] is None:
        raise metareg.DataError(
            f"omniglot: images_background.zip not found under {base}. Pass root=FOLDER holding the official "
            "images_background.zip / images_evaluation.zip (or the extracted folders), or download=true to fetch "
            "them from github.com/brendenlake/omniglot."
        )
    sets = {name: load_set(src, image_size) for name, src in sources.items() if src is not None}
    note = ""
    if "images_evaluation" not in sets:
        note = ("only images_background was found: its "
                + ("characters are split 1028:172:423 at random" if split == "vinyals"
                   else f"30 alphabets are split {30 - 2 * validation_alphabets}/{validation_alphabets}/"
                        f"{validation_alphabets} (train/validation/test)")
                + "; add images_evaluation.zip for the standard protocol")
        warnings.warn(f"omniglot: {note}", RuntimeWarning, stacklevel=2)

    # Pool the sets into one label space of globally unique class names.
    images, labels, names = [], [], []
    for name in SETS:
        if name in sets:
            a = sets[name]
            images.append(torch.from_numpy(a["images"]))
            labels.append(torch.from_numpy(a["labels"].astype(np.int64)) + len(names))
            names.extend(str(c) for c in a["classes"])
    x, y = torch.cat(images), torch.cat(labels)
    origin = {c: "images_background" for c in range(len(sets["images_background"]["classes"]))}

    if split == "vinyals":
        ids = list(range(len(names)))
        parts = metareg.split_classes(ids, VINYALS, seed)
    else:
        alphabet_of = [n.split("/")[0] for n in names]
        bg_alphabets = sorted({alphabet_of[c] for c in origin})
        g = torch.Generator().manual_seed(seed)
        order = [bg_alphabets[i] for i in torch.randperm(len(bg_alphabets), generator=g).tolist()]
        val = set(order[:validation_alphabets])
        if "images_evaluation" in sets:
            test = {a for c, a in enumerate(alphabet_of) if c not in origin}
        else:
            test = set(order[validation_alphabets: 2 * validation_alphabets])
        parts = {
            "train": [c for c, a in enumerate(alphabet_of) if a not in val and a not in test],
            "validation": [c for c, a in enumerate(alphabet_of) if a in val],
            "test": [c for c, a in enumerate(alphabet_of) if a in test],
        }
    splits = {}
    for part, chosen in parts.items():
        chosen_t = torch.tensor(sorted(chosen), dtype=torch.long)
        remap = torch.full((len(names),), -1, dtype=torch.long)
        remap[chosen_t] = torch.arange(len(chosen_t))
        mask = remap[y] >= 0
        xs, ys = x[mask], remap[y[mask]]
        cls = [names[c] for c in chosen_t.tolist()]
        if rotations:
            k = len(cls)
            xs = torch.cat([torch.rot90(xs, r, dims=(2, 3)) for r in range(4)])
            ys = torch.cat([ys + r * k for r in range(4)])
            cls = [f"{c}/rot{90 * r}" for r in range(4) for c in cls]
        splits[part] = metareg.ClassSplit(xs.contiguous(), ys, cls)
    info = metareg.DatasetInfo(
        # how `metareg predict` prepares new drawings (black on white files) the way these were prepared
        invert=True,
        resample="box",
        note=note or None,
        details={
            "split": split,
            "sources": {k: os.fspath(v) for k, v in sources.items() if v is not None},
            "ink": "white on black (255 = stroke)",
            "rotations": rotations,
        },
    )
    return metareg.FewShotDataset("omniglot", splits["train"], splits["validation"], splits["test"], 1, image_size,
                                  info)
