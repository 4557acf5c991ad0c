"""The embedded `glyphs` dataset: contents, splits, determinism, cache behaviour, the default's size."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from metareg_datasets import glyphs as G

import metareg

SMALL = dict(image_size=16, samples_per_class=4, min_fonts=16,
             alphabets=("Basic Latin", "Greek and Coptic", "Box Drawing", "General Punctuation"))
TINY = dict(image_size=12, samples_per_class=3, min_fonts=16,
            alphabets=("Box Drawing", "General Punctuation", "Latin Extended-B"))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def small():
    return G.glyphs(**SMALL)


def test_small_set_shapes_ink_and_disjoint_alphabets(small):
    ds = small
    assert (ds.channels, ds.image_size) == (1, 16)
    seen_alphabets = set()
    for name in ("train", "validation", "test"):
        split = ds.split(name)
        x = split.images.images
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 16, 16)
        assert split.num_classes >= 5
        assert torch.equal(split.counts(), torch.full((split.num_classes,), 4))
        # white ink on black: corners are background, most pixels are dark, every image has ink
        assert (x[:, 0, 0, 0] == 0).float().mean() > 0.95
        assert x.float().mean() < 80
        assert (x.flatten(1).max(1).values == 255).all()
        alphabets = {c.split("/")[0] for c in split.classes}
        assert alphabets <= set(SMALL["alphabets"])
        assert not alphabets & seen_alphabets, "an alphabet appears in two splits"
        seen_alphabets |= alphabets
        assert all(c.split("/")[1].startswith("U+") for c in split.classes)
    assert seen_alphabets == set(SMALL["alphabets"])


def test_samples_of_a_class_differ_and_classes_differ(small):
    x = small.train.images.images.float()
    labels = small.train.labels
    a = x[labels == 0]
    assert (a[0] - a[1]).abs().mean() > 1  # distortions / fonts differ
    b = x[labels == 1]
    assert (a.mean(0) - b.mean(0)).abs().mean() > 1


def test_generation_is_deterministic_for_a_seed():
    opts = dict(image_size=12, samples_per_class=3, min_fonts=16, alphabets=("General Punctuation",))
    a = G.generate(seed=3, **opts)
    b = G.generate(seed=3, **opts)
    c = G.generate(seed=4, **opts)
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert np.array_equal(a["codepoints"], c["codepoints"])
    assert not np.array_equal(a["images"], c["images"])


def test_cache_is_written_once_then_reused(tmp_cache, monkeypatch):
    opts = TINY
    G.glyphs(**opts)
    files = list(tmp_cache.glob("glyphs-v*.npz"))
    assert len(files) == 1 and "12px" in files[0].name and "3per" in files[0].name
    assert not list(tmp_cache.glob(".*tmp*")), "temporary file left behind"
    with np.load(files[0], allow_pickle=False) as z:  # a plain, pickle-free npz
        assert z["images"].dtype == np.uint8

    def boom(**kwargs):
        raise AssertionError("regenerated although the cache was valid")

    monkeypatch.setattr(G, "generate", boom)
    again = G.glyphs(**opts)
    assert again.train.num_classes > 0


def test_corrupt_cache_is_regenerated_with_a_warning(tmp_cache):
    opts = TINY
    first = G.glyphs(**opts)
    path = next(tmp_cache.glob("glyphs-v*.npz"))
    path.write_bytes(b"PK\x03\x04 truncated garbage")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        second = G.glyphs(**opts)
    assert torch.equal(first.train.images.images, second.train.images.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        G.glyphs(**opts)  # repaired: no warning any more


def test_split_alphabets_follows_ratios_and_seed():
    sizes = {f"a{i}": 10 + i for i in range(30)}
    out = G.split_alphabets(sizes, (0.6, 0.2, 0.2), seed=1)
    assert sorted(sum(out.values(), [])) == sorted(sizes)
    total = sum(sizes.values())
    share = {k: sum(sizes[a] for a in v) / total for k, v in out.items()}
    assert abs(share["train"] - 0.6) < 0.06 and abs(share["test"] - 0.2) < 0.06
    assert out == G.split_alphabets(sizes, (0.6, 0.2, 0.2), seed=1)
    assert out != G.split_alphabets(sizes, (0.6, 0.2, 0.2), seed=2)


@pytest.mark.parametrize("bad, match", [
    (dict(image_size=4), "image_size"),
    (dict(samples_per_class=1), "samples_per_class"),
    (dict(min_fonts=99), "min_fonts"),
    (dict(ratios=(1.0, 0.0, 1.0)), "ratios"),
    (dict(alphabets=("Cyrilic",)), "Did you mean 'Cyrillic'"),
])
def test_bad_options_are_refused(bad, match):
    with pytest.raises(metareg.OptionError, match=match):
        G.glyphs(**bad)


def test_default_meets_the_size_bar():
    """>= 1000 classes from >= 20 alphabets, >= 20 samples each, 28x28 (cached once per machine)."""
    ds = G.glyphs()
    assert (ds.channels, ds.image_size) == (1, 28)
    classes = sum(ds.split(s).num_classes for s in ("train", "validation", "test"))
    alphabets = {c.split("/")[0] for s in ("train", "validation", "test") for c in ds.split(s).classes}
    assert classes >= 1000 and len(alphabets) >= 20
    for s in ("train", "validation", "test"):
        assert ds.split(s).counts().min() >= 20
        assert ds.split(s).images.images.shape[1:] == (1, 28, 28)
