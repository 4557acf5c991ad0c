"""``glyphs``: an Omniglot-like dataset rendered from the TrueType fonts matplotlib ships.

No network and no data files: matplotlib (a dependency) carries the DejaVu and STIX
font families. A *class* is one Unicode character drawn by enough of those fonts; an
*alphabet* is its Unicode block (Latin Extended-A, Cyrillic, Box Drawing, Braille
Patterns, Arrows, ...). Train, validation and test classes are split by alphabet,
like Omniglot's background / evaluation alphabets. Each sample is one font's
rendering of the character, normalised in size and centred, then distorted by a
random affine map (rotation, shear, anisotropic scale, shift) and a random stroke
width change (grey-level dilation or erosion); the result is box-filtered down to
``image_size``. Ink is bright (255) on a black (0) background, the same convention
as the ``omniglot`` dataset, so models transfer between them.

The images are generated once per option set and cached as an ``.npz`` (read without
pickle) in ``$METAREG_CACHE_DIR`` or the user cache directory; the file name carries
the options, a format version and a fingerprint of the font files.
"""
from __future__ import annotations

import bisect
import difflib
import os
import time
import unicodedata
import warnings
from pathlib import Path

import numpy as np

import metareg
from metareg_datasets import cache

FORMAT_VERSION = 2

# Unicode blocks (start, end, name) for the ranges the DejaVu / STIX fonts cover.
BLOCKS = [
    (0x0000, 0x007F, "Basic Latin"), (0x0080, 0x00FF, "Latin-1 Supplement"),
    (0x0100, 0x017F, "Latin Extended-A"), (0x0180, 0x024F, "Latin Extended-B"),
    (0x0250, 0x02AF, "IPA Extensions"), (0x02B0, 0x02FF, "Spacing Modifier Letters"),
    (0x0370, 0x03FF, "Greek and Coptic"), (0x0400, 0x04FF, "Cyrillic"),
    (0x0500, 0x052F, "Cyrillic Supplement"), (0x0530, 0x058F, "Armenian"), (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"), (0x07C0, 0x07FF, "NKo"), (0x0E00, 0x0E7F, "Thai"), (0x0E80, 0x0EFF, "Lao"),
    (0x10A0, 0x10FF, "Georgian"), (0x13A0, 0x13FF, "Cherokee"),
    (0x1400, 0x167F, "Unified Canadian Aboriginal Syllabics"), (0x1680, 0x169F, "Ogham"),
    (0x1D00, 0x1D7F, "Phonetic Extensions"), (0x1D80, 0x1DBF, "Phonetic Extensions Supplement"),
    (0x1E00, 0x1EFF, "Latin Extended Additional"), (0x1F00, 0x1FFF, "Greek Extended"),
    (0x2000, 0x206F, "General Punctuation"), (0x2070, 0x209F, "Superscripts and Subscripts"),
    (0x20A0, 0x20CF, "Currency Symbols"), (0x2100, 0x214F, "Letterlike Symbols"),
    (0x2150, 0x218F, "Number Forms"), (0x2190, 0x21FF, "Arrows"), (0x2200, 0x22FF, "Mathematical Operators"),
    (0x2300, 0x23FF, "Miscellaneous Technical"), (0x2400, 0x243F, "Control Pictures"),
    (0x2440, 0x245F, "Optical Character Recognition"), (0x2460, 0x24FF, "Enclosed Alphanumerics"),
    (0x2500, 0x257F, "Box Drawing"), (0x2580, 0x259F, "Block Elements"), (0x25A0, 0x25FF, "Geometric Shapes"),
    (0x2600, 0x26FF, "Miscellaneous Symbols"), (0x2700, 0x27BF, "Dingbats"),
    (0x27C0, 0x27EF, "Miscellaneous Mathematical Symbols-A"), (0x27F0, 0x27FF, "Supplemental Arrows-A"),
    (0x2800, 0x28FF, "Braille Patterns"), (0x2900, 0x297F, "Supplemental Arrows-B"),
    (0x2980, 0x29FF, "Miscellaneous Mathematical Symbols-B"),
    (0x2A00, 0x2AFF, "Supplemental Mathematical Operators"),
    (0x2B00, 0x2BFF, "Miscellaneous Symbols and Arrows"), (0x2C00, 0x2C5F, "Glagolitic"),
    (0x2C60, 0x2C7F, "Latin Extended-C"), (0x2C80, 0x2CFF, "Coptic"), (0x2D00, 0x2D2F, "Georgian Supplement"),
    (0x2D30, 0x2D7F, "Tifinagh"), (0x2E00, 0x2E7F, "Supplemental Punctuation"),
    (0xA640, 0xA69F, "Cyrillic Extended-B"), (0xA700, 0xA71F, "Modifier Tone Letters"),
    (0xA720, 0xA7FF, "Latin Extended-D"), (0xFB00, 0xFB4F, "Alphabetic Presentation Forms"),
    (0xFE70, 0xFEFF, "Arabic Presentation Forms-B"), (0xFF00, 0xFFEF, "Halfwidth and Fullwidth Forms"),
]
_STARTS = [b[0] for b in BLOCKS]
MIN_ALPHABET_SIZE = 5  # blocks with fewer usable characters are left out
# Font families with real Unicode charmaps (the Computer Modern and STIX size/non-Unicode
# fonts map code points to unrelated shapes; LastResort draws placeholder boxes).
FONT_PREFIXES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral")


def block_of(cp: int) -> str | None:
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and BLOCKS[i][0] <= cp <= BLOCKS[i][1]:
        return BLOCKS[i][2]
    return None


def font_files() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    files = sorted(p for p in folder.glob("*.ttf") if p.name.startswith(FONT_PREFIXES) and "Display" not in p.name)
    if not files:
        raise metareg.DataError(f"glyphs: no DejaVu/STIX fonts found in {folder}; is matplotlib installed intact?")
    return files


def _fingerprint(files: list[Path]) -> str:
    return cache.options_key(*[(p.name, p.stat().st_size) for p in files])


def _usable(cp: int) -> bool:
    ch = chr(cp)
    cat = unicodedata.category(ch)
    # letters, numbers, symbols, punctuation; no spaces, marks, controls, private use;
    # no compatibility variants (fullwidth, math alphanumerics, superscripts) that duplicate
    # another character's shape.
    return cat[0] in "LNSP" and unicodedata.normalize("NFKC", ch) == ch and block_of(cp) is not None


def _no_hinting():
    # hinting is slow and distorts small renderings; matplotlib >= 3.10 spells the flag LoadFlags
    from matplotlib import ft2font

    if hasattr(ft2font, "LoadFlags"):
        return ft2font.LoadFlags.NO_HINTING
    return ft2font.LOAD_NO_HINTING


def _render_all(files: list[Path], min_fonts: int, canvas: int, alphabets: tuple[str, ...] = ()):
    """Render every usable character in every font that has it, size-normalised on a canvas.

    Returns code points (sorted), per code point the list of (font index, render row),
    the renders (R, canvas, canvas) uint8 and per render the scale that normalises its size.
    """
    from matplotlib.ft2font import FT2Font
    from PIL import Image

    fonts = [FT2Font(str(p)) for p in files]
    cover: dict[int, list[int]] = {}
    for fi, ft in enumerate(fonts):
        for cp in ft.get_charmap():
            cover.setdefault(cp, []).append(fi)
    candidates = sorted(cp for cp, fs in cover.items() if len(fs) >= min_fonts and _usable(cp)
                        and (not alphabets or block_of(cp) in alphabets))
    # Render at an em of 0.7 canvas and centre the ink box on the canvas; the size
    # normalisation (ink box -> 0.8 canvas) is folded into the later affine warp, so
    # no per-glyph resampling is needed here.
    em = max(8, round(0.7 * canvas))
    fill = 0.8 * canvas
    renders: list[np.ndarray] = []
    scales: list[float] = []
    rows: dict[int, list[tuple[int, int]]] = {cp: [] for cp in candidates}
    by_font: dict[int, list[int]] = {}
    for cp in candidates:
        for fi in cover[cp]:
            by_font.setdefault(fi, []).append(cp)
    flags = _no_hinting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fi in sorted(by_font):
            ft = fonts[fi]
            ft.set_size(em, 72)
            for cp in by_font[fi]:
                ft.clear()
                ft.set_text(chr(cp), 0.0, flags=flags)
                ft.draw_glyphs_to_bitmap(antialiased=True)
                img = np.asarray(ft.get_image())
                rmask, cmask = img.max(1) > 32, img.max(0) > 32
                if not rmask.any():
                    continue
                r0, r1 = rmask.argmax(), len(rmask) - rmask[::-1].argmax()
                c0, c1 = cmask.argmax(), len(cmask) - cmask[::-1].argmax()
                crop = img[r0:r1, c0:c1]
                h, w = crop.shape
                unit = 0.6 * em  # glyphs smaller than 0.6 em (dots, dashes) keep their relative size
                if max(h, w) > canvas:  # rare very wide glyphs: shrink to fit the canvas first
                    k = canvas / max(h, w)
                    h, w, unit = max(1, int(h * k)), max(1, int(w * k)), unit * k
                    crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
                out = np.zeros((canvas, canvas), np.uint8)
                top, left = (canvas - h) // 2, (canvas - w) // 2
                out[top: top + h, left: left + w] = crop
                rows[cp].append((fi, len(renders)))
                renders.append(out)
                scales.append(fill / max(h, w, unit))
    return candidates, rows, np.stack(renders), np.array(scales, np.float32)


def _max3(x, sign: float = 1.0):
    """3x3 grey-level dilation (sign=1) or erosion (sign=-1) as two separable 3-tap maxima.

    The one-pixel border is left as it is: renders are centred with a wide empty margin.
    """
    import torch

    y = x * sign if sign < 0 else x
    h = y.clone()
    h[..., :, 1:-1] = torch.maximum(torch.maximum(y[..., :, :-2], y[..., :, 1:-1]), y[..., :, 2:])
    v = h.clone()
    v[..., 1:-1, :] = torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])
    return v * sign if sign < 0 else v


def _distort(src, theta_params, stroke, image_size: int):
    """Affine-warp and stroke-jitter a batch of (B, 1, R, R) float renders, box-filter to image_size."""
    import torch
    import torch.nn.functional as F

    rot, shear, sx, sy, tx, ty = theta_params.unbind(1)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # inverse map (output -> source coordinates) of a rotation, shear and anisotropic scale, plus shift
    a = torch.stack([cos / sx, (sin + shear * cos) / sx, tx], 1).view(-1, 3, 1, 1)
    b = torch.stack([-sin / sy, (cos - shear * sin) / sy, ty], 1).view(-1, 3, 1, 1)
    size = src.shape[-1]
    lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres, align_corners=False
    gx, gy = lin.view(1, 1, size), lin.view(1, size, 1)
    grid = torch.stack([a[:, 0] * gx + a[:, 1] * gy + a[:, 2], b[:, 0] * gx + b[:, 1] * gy + b[:, 2]], -1)
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for sign in (1.0, -1.0):  # thicken strokes where stroke > 0, thin them where stroke < 0
        pick = torch.nonzero(stroke * sign > 0).flatten()
        if len(pick):
            part = x[pick]
            x[pick] = torch.lerp(part, _max3(part, sign), (stroke[pick] * sign).view(-1, 1, 1, 1))
    factor = size // image_size
    if factor > 1:
        x = F.avg_pool2d(x, factor)
    # contrast-normalise: the brightest stroke pixel of every image is 255, as in binarised Omniglot
    x = x / x.amax((1, 2, 3), keepdim=True).clamp(min=1e-3)
    return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def generate(*, seed: int, image_size: int, samples_per_class: int, min_fonts: int,
             alphabets: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Render the whole dataset (no cache involved)."""
    import torch

    files = font_files()
    canvas = 2 * image_size  # render at twice the size and box-filter down (anti-aliasing)
    cps, rows, renders, norm = _render_all(files, min_fonts, canvas, alphabets)
    keep = [cp for cp in cps if len(rows[cp]) >= min_fonts]
    blocks: dict[str, list[int]] = {}
    for cp in keep:
        blocks.setdefault(block_of(cp), []).append(cp)
    blocks = {b: v for b, v in blocks.items() if len(v) >= MIN_ALPHABET_SIZE}
    block_names = sorted(blocks)
    codepoints = sorted(cp for v in blocks.values() for cp in v)
    block_index = np.array([block_names.index(block_of(cp)) for cp in codepoints], np.int16)

    g = torch.Generator().manual_seed(int(seed))
    n_cls, per = len(codepoints), samples_per_class
    # each class cycles through its fonts in a random order: every font used about equally
    src_rows = np.empty((n_cls, per), np.int64)
    for c, cp in enumerate(codepoints):
        r = [row for _, row in rows[cp]]
        order = torch.randperm(len(r), generator=g).tolist()
        src_rows[c] = [r[order[j % len(r)]] for j in range(per)]
    src_rows = src_rows.reshape(-1)
    total = len(src_rows)
    u = torch.rand(total, 7, generator=g)
    params = torch.stack([
        (u[:, 0] * 2 - 1) * np.deg2rad(12.0),  # rotation
        (u[:, 1] * 2 - 1) * 0.2,  # shear
        0.85 + 0.25 * u[:, 2],  # x scale
        0.85 + 0.25 * u[:, 3],  # y scale
        (u[:, 4] * 2 - 1) * 0.08,  # x shift (fraction of half-width)
        (u[:, 5] * 2 - 1) * 0.08,  # y shift
    ], 1)
    # stroke width: -1 = full erosion .. +1 = full dilation (one pixel at twice the size)
    stroke = u[:, 6] * 1.8 - 0.8
    params[:, 2:4] *= torch.from_numpy(norm[src_rows]).unsqueeze(1)  # size normalisation of each render
    images = torch.empty(total, 1, image_size, image_size, dtype=torch.uint8)
    renders_t = torch.from_numpy(renders)
    chunk = 4096
    for s in range(0, total, chunk):
        idx = torch.from_numpy(src_rows[s: s + chunk])
        src = renders_t[idx].unsqueeze(1).float().div_(255)
        images[s: s + chunk] = _distort(src, params[s: s + chunk], stroke[s: s + chunk], image_size)
    labels = np.repeat(np.arange(n_cls, dtype=np.int32), per)
    return {
        "images": images.numpy(),
        "labels": labels,
        "codepoints": np.array(codepoints, np.int32),
        "block_index": block_index,
        "block_names": np.array(block_names),
    }


def cache_path(*, seed: int, image_size: int, samples_per_class: int, min_fonts: int,
               alphabets: tuple[str, ...] = ()) -> Path:
    key = cache.options_key(FORMAT_VERSION, _fingerprint(font_files()), tuple(sorted(alphabets)))
    name = f"glyphs-v{FORMAT_VERSION}-s{seed}-{image_size}px-{samples_per_class}per-f{min_fonts}-{key}.npz"
    return cache.cache_dir() / name


def load_arrays(*, seed: int = 0, image_size: int = 28, samples_per_class: int = 20, min_fonts: int = 9,
                alphabets: tuple[str, ...] = (), regenerate: bool = False) -> dict[str, np.ndarray]:
    """The dataset's arrays, from the cache or freshly generated (and then cached)."""
    opts = dict(seed=seed, image_size=image_size, samples_per_class=samples_per_class, min_fonts=min_fonts,
                alphabets=tuple(alphabets))
    path = cache_path(**opts)
    required = ("images", "labels", "codepoints", "block_index", "block_names")
    writable = not path.exists() or path.is_file()
    if not writable:
        warnings.warn(f"glyphs: the cache path {path} is a {'folder' if path.is_dir() else 'special file'}, not a "
                      "cache file; generating the dataset without caching it (remove it to cache again)",
                      RuntimeWarning, stacklevel=3)
    arrays = None if regenerate or not writable else cache.load_npz(path, required)
    if arrays is not None:
        problem = _inconsistency(arrays, image_size, samples_per_class)
        if problem is None:
            return arrays
        warnings.warn(f"glyphs: cache file {path} is inconsistent ({problem}); regenerating it",
                      RuntimeWarning, stacklevel=3)
    t0 = time.perf_counter()
    arrays = generate(**opts)
    arrays["generation_seconds"] = np.array(time.perf_counter() - t0)
    if writable:
        cache.save_npz(path, **arrays)
    return arrays


def _inconsistency(a: dict[str, np.ndarray], image_size: int, samples_per_class: int) -> str | None:
    """What is wrong with cached arrays (a damaged or foreign file under the right name), or None."""
    images, labels, cps, bidx = a["images"], a["labels"], a["codepoints"], a["block_index"]
    if images.dtype != np.uint8 or images.shape[1:] != (1, image_size, image_size):
        return f"images are {images.dtype} {images.shape}, expected uint8 (N, 1, {image_size}, {image_size})"
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        return f"labels are {labels.dtype} {labels.shape} for {len(images)} images"
    if cps.ndim != 1 or bidx.shape != cps.shape or bidx.dtype.kind not in "iu" or cps.dtype.kind not in "iu":
        return f"codepoints {cps.shape} and block_index {bidx.shape} do not match"
    if len(labels) and (labels.min() < 0 or labels.max() >= len(cps)):
        return f"labels range from {labels.min()} to {labels.max()}, outside [0, {len(cps)})"
    if len(bidx) and (bidx.min() < 0 or bidx.max() >= len(a["block_names"])):
        return f"block_index outside [0, {len(a['block_names'])})"
    counts = np.bincount(labels, minlength=len(cps))
    if (counts != samples_per_class).any():
        return f"classes hold {counts.min()}..{counts.max()} images, expected {samples_per_class} each"
    return None


def split_alphabets(sizes: dict[str, int], ratios: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Assign whole alphabets to train / validation / test so class counts follow ``ratios``.

    Alphabets are visited in a seeded random order; each goes to the split furthest
    below its share of the classes seen so far. Every split gets at least one alphabet.
    """
    import torch

    names = sorted(sizes)
    if len(names) < 3:
        raise metareg.DataError(f"glyphs: only {len(names)} alphabets; need at least 3 for three splits")
    order = [names[i] for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()]
    total_ratio = sum(ratios)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    counts = dict.fromkeys(out, 0)
    splits = list(out)
    # seed each split with one alphabet, then fill by deficit
    for split, name in zip(splits, order[:3], strict=True):
        out[split].append(name)
        counts[split] += sizes[name]
    for name in order[3:]:
        done = sum(counts.values()) + sizes[name]
        deficit = {s: ratios[i] / total_ratio * done - counts[s] for i, s in enumerate(splits)}
        best = max(splits, key=lambda s: deficit[s])
        out[best].append(name)
        counts[best] += sizes[name]
    return {s: sorted(v) for s, v in out.items()}


def glyphs(
    *,
    image_size: int = 28,
    samples_per_class: int = 20,
    min_fonts: int = 9,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    alphabets: tuple[str, ...] = (),
    regenerate: bool = False,
) -> metareg.FewShotDataset:
    """Omniglot-like characters rendered from matplotlib's fonts; no download. White ink on black.

    image_size: side of the square images in pixels (8..128).
    samples_per_class: renderings per character (fonts cycle, each with its own distortion).
    min_fonts: keep only characters drawn by at least this many of the 16 DejaVu/STIX fonts.
    seed: seed of the distortions (changing it generates and caches a new set).
    ratios: share of classes for train, validation, test; whole alphabets (Unicode blocks) go to one split.
    split_seed: seed of the alphabet-to-split assignment.
    alphabets: use only these Unicode blocks, e.g. "Basic Latin,Cyrillic,Armenian" (default: all with 5+ characters).
    regenerate: ignore the cache and render again.
    """
    import torch

    if not 8 <= image_size <= 128:
        raise metareg.OptionError(f"glyphs: image_size must be between 8 and 128, got {image_size}")
    if samples_per_class < 2:
        raise metareg.OptionError(f"glyphs: samples_per_class must be at least 2, got {samples_per_class}")
    n_fonts = len(font_files())
    if not 1 <= min_fonts <= n_fonts:
        raise metareg.OptionError(
            f"glyphs: min_fonts must be between 1 and {n_fonts} (the fonts found), got {min_fonts}")
    if len(ratios) != 3 or any(r <= 0 for r in ratios):
        raise metareg.OptionError(
            f"glyphs: ratios must be three positive numbers (train, validation, test), got {ratios}")
    known = [b[2] for b in BLOCKS]
    for name in alphabets:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise metareg.OptionError(
                f"glyphs: unknown alphabet {name!r}.{hint} Known Unicode blocks: {', '.join(known)}")
    alphabets = tuple(sorted(set(alphabets)))
    cache_file = cache_path(seed=seed, image_size=image_size, samples_per_class=samples_per_class,
                            min_fonts=min_fonts, alphabets=alphabets)
    a = load_arrays(seed=seed, image_size=image_size, samples_per_class=samples_per_class, min_fonts=min_fonts,
                    alphabets=alphabets, regenerate=regenerate)
    images = torch.from_numpy(a["images"])
    labels = torch.from_numpy(a["labels"].astype(np.int64))
    cps, bidx, bnames = a["codepoints"], a["block_index"], [str(b) for b in a["block_names"]]
    class_names = [f"{bnames[b]}/U+{int(cp):04X}" for cp, b in zip(cps, bidx, strict=True)]
    sizes = {name: int((bidx == i).sum()) for i, name in enumerate(bnames)}
    assignment = split_alphabets(sizes, tuple(ratios), split_seed)
    parts = {}
    for split, blocks in assignment.items():
        wanted = np.isin(bidx, [bnames.index(x) for x in blocks])
        chosen = np.nonzero(wanted)[0]
        remap = torch.full((len(cps),), -1, dtype=torch.long)
        remap[torch.from_numpy(chosen)] = torch.arange(len(chosen))
        mask = remap[labels] >= 0
        parts[split] = metareg.ClassSplit(images[mask], remap[labels[mask]], [class_names[i] for i in chosen])
    info = metareg.DatasetInfo(
        # `metareg predict` inverts new images: characters on paper or screen are dark on light
        invert=True,
        details={
            "alphabets": assignment,
            "ink": "white on black (255 = stroke)",
            "generation_seconds": float(a.get("generation_seconds", np.nan)),
            "cache": os.fspath(cache_file),
        },
    )
    return metareg.FewShotDataset("glyphs", parts["train"], parts["validation"], parts["test"], 1, image_size, info)
