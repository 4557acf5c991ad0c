"""Dataset plugins: omniglot, miniimagenet, imagefolder, in-memory arrays, registration, download checks."""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from metareg_datasets import cache
from metareg_datasets import omniglot as O
from metareg_datasets.imagefolder import imagefolder
from metareg_datasets.miniimagenet import miniimagenet
from PIL import Image

import metareg
from metareg.cli import cli

SPLITS = ("train", "validation", "test")


def _classes(ds):
    return [set(ds.split(s).classes) for s in SPLITS]


def _assert_disjoint(ds):
    tr, va, te = _classes(ds)
    assert not (tr & va) and not (tr & te) and not (va & te)


# ---------------------------------------------------------------- registration and CLI


def test_list_and_info_show_every_dataset():
    runner = CliRunner()
    out = runner.invoke(cli, ["list", "datasets"], catch_exceptions=False).output
    for name in ("glyphs", "omniglot", "miniimagenet", "imagefolder"):
        assert name in out
    for name, option in [("glyphs", "samples_per_class"), ("omniglot", "rotations"), ("miniimagenet", "format"),
                         ("imagefolder", "ratios")]:
        res = runner.invoke(cli, ["info", "datasets", name], catch_exceptions=False)
        assert res.exit_code == 0 and option in res.output
        assert "image_size" in res.output  # a dataset's own size option is shown, not hidden as "injected"
        # every listed option has a help line
        rows = [r for r in res.output.splitlines()[res.output.splitlines().index(
            next(r for r in res.output.splitlines() if r.strip().startswith("NAME"))) + 1:] if r.strip()]
        assert rows and all(len(r.split()) >= 4 for r in rows), rows


def test_dataset_size_and_channel_options_bind():
    from metareg_datasets.glyphs import glyphs

    from metareg.options import bind

    assert bind(glyphs, {"image_size": "32"}, component="dataset 'glyphs'")["image_size"] == 32
    assert bind(imagefolder, {"root": "x", "channels": "1"}, component="dataset 'imagefolder'")["channels"] == 1
    with pytest.raises(metareg.OptionError, match="channels"):
        bind(imagefolder, {"root": "x", "channels": "2"}, component="dataset 'imagefolder'")


# ---------------------------------------------------------------- omniglot (real file)


@pytest.fixture
def omniglot_vinyals(omniglot_zip):
    with pytest.warns(RuntimeWarning, match="only images_background"):
        return O.omniglot(root=str(omniglot_zip.parent))


def test_omniglot_vinyals_split_on_the_real_zip(omniglot_zip, omniglot_vinyals):
    ds = omniglot_vinyals
    counts = [ds.split(s).num_classes for s in SPLITS]
    assert sum(counts) == 964 and counts == [611, 102, 251]  # 1028:172:423 of the 964 background characters
    _assert_disjoint(ds)
    assert "note" in ds.info
    for s in SPLITS:
        split = ds.split(s)
        assert torch.equal(split.counts(), torch.full((split.num_classes,), 20))
        x = split.images.images
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28)
        assert x.max() == 255 and x.float().mean() < 60  # ink bright, background black
        assert (x[:, 0, 0, 0] == 0).float().mean() > 0.95


def test_omniglot_lake_split_with_rotations(omniglot_zip):
    with pytest.warns(RuntimeWarning):
        ds = O.omniglot(root=str(omniglot_zip), split="lake", rotations=True, seed=1)
    _assert_disjoint(ds)
    alphabets = [{c.split("/")[0] for c in ds.split(s).classes} for s in SPLITS]
    assert [len(a) for a in alphabets] == [20, 5, 5]
    assert not (alphabets[0] & alphabets[1]) and not (alphabets[0] & alphabets[2])
    tr = ds.train
    assert tr.num_classes % 4 == 0 and sum(ds.split(s).num_classes for s in SPLITS) == 4 * 964
    k = tr.num_classes // 4
    assert tr.classes[k].endswith("/rot90") and tr.classes[k].removesuffix("/rot90") == tr.classes[0].removesuffix(
        "/rot0")
    x0 = tr.images.images[tr.labels == 0]
    x90 = tr.images.images[tr.labels == k]
    assert torch.equal(torch.rot90(x0, 1, dims=(2, 3)), x90)


def _tiny_omniglot_zip(path: Path, set_name="images_background", alphabets=("Alpha", "Beta", "Gamma")):
    with zipfile.ZipFile(path, "w") as zf:
        for a in alphabets:
            for c in range(1, 3):
                for d in range(1, 4):
                    im = Image.new("1", (105, 105), 1)
                    im.paste(0, (10 * c, 10 * d, 10 * c + 30, 10 * d + 40))
                    buf = __import__("io").BytesIO()
                    im.save(buf, "PNG")
                    zf.writestr(f"{set_name}/{a}/character{c:02d}/{c:02d}{d:02d}_{d:02d}.png", buf.getvalue())
    return path


def test_omniglot_reads_extracted_folders_and_both_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path / "cache"))
    _tiny_omniglot_zip(tmp_path / "images_background.zip")
    _tiny_omniglot_zip(tmp_path / "evaluation.zip", "images_evaluation", ("Delta", "Epsilon"))
    with zipfile.ZipFile(tmp_path / "evaluation.zip") as zf:
        zf.extractall(tmp_path)  # extracted folder images_evaluation/
    ds = O.omniglot(root=str(tmp_path), split="lake", validation_alphabets=1, image_size=14)
    assert "note" not in ds.info
    assert {c.split("/")[0] for c in ds.test.classes} == {"Delta", "Epsilon"}
    assert ds.train.num_classes + ds.validation.num_classes == 6 and ds.validation.num_classes == 2
    x = ds.train.images.images
    assert x.shape[1:] == (1, 14, 14) and x.max() == 255 and x[:, 0, 0, 0].max() == 0


def test_omniglot_corrupt_png_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "images_background" / "Alpha" / "character01"
    folder.mkdir(parents=True)
    (folder / "0101_01.png").write_bytes(b"not a png")
    with pytest.raises(metareg.DataError, match="0101_01.png"):
        O.omniglot(root=str(tmp_path))


def test_omniglot_missing_files_offline_is_a_clear_error(tmp_path):
    with pytest.raises(metareg.DataError, match="download=true"):
        O.omniglot(root=str(tmp_path))


def test_omniglot_download_verifies_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path / "cache"))
    served = _tiny_omniglot_zip(tmp_path / "served.zip")
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setitem(O.URLS, "images_background", [served.as_uri()])
    monkeypatch.setitem(O.URLS, "images_evaluation", ["http://127.0.0.1:9/images_evaluation.zip"])
    dest = tmp_path / "data"
    # a mismatching file is refused and nothing is left behind
    monkeypatch.setitem(O.CHECKSUMS, "images_background", [{"sha256": "0" * 64}])
    with pytest.raises(metareg.DataError, match="checksum mismatch"):
        O.omniglot(root=str(dest), download=True)
    assert not list(dest.glob("*")), list(dest.glob("*"))
    # the right digest passes; the evaluation zip cannot be fetched (offline) -> clear error
    monkeypatch.setitem(O.CHECKSUMS, "images_background", [{"md5": "f" * 32}, {"sha256": digest}])
    with pytest.raises(metareg.DataError, match="could not download images_evaluation.zip"):
        O.omniglot(root=str(dest), download=True)
    assert (dest / "images_background.zip").is_file()
    assert not list(dest.glob(".*tmp*"))


def test_download_helper_offline_and_mismatch(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    with pytest.raises(metareg.DataError, match="offline"):
        cache.download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", None, what="test", timeout=5)
    good = {"sha256": hashlib.sha256(b"hello").hexdigest()}
    cache.download(src.as_uri(), tmp_path / "ok.bin", lambda p: cache.verify(p, good, what="t"), what="t")
    assert (tmp_path / "ok.bin").read_bytes() == b"hello"
    with pytest.raises(metareg.DataError, match="checksum mismatch"):
        cache.download(src.as_uri(), tmp_path / "bad.bin", lambda p: cache.verify(p, {"md5": "0" * 32}, what="t"),
                       what="t")
    assert not (tmp_path / "bad.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.bin", "src.bin"]


# ---------------------------------------------------------------- miniimagenet


def _write_l2l_pickles(root: Path, classes=(4, 3, 3), per=6, size=20, protocol=4):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, nc in zip(SPLITS, classes, strict=True):
        images = rng.integers(0, 256, (nc * per, size, size, 3), dtype=np.uint8)
        # indices as plain ints for some classes, numpy scalars for others (both occur in the wild)
        class_dict = {f"n{split[:2]}{c:05d}": [np.int64(i) if c % 2 else i for i in range(c, nc * per, nc)]
                      for c in range(nc)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as fh:
            pickle.dump({"image_data": images, "class_dict": class_dict}, fh, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_miniimagenet_learn2learn_pickles(tmp_path, protocol):
    _write_l2l_pickles(tmp_path, protocol=protocol)
    ds = miniimagenet(root=str(tmp_path), image_size=20)
    assert (ds.channels, ds.image_size) == (3, 20) and ds.info["format"] == "pickle"
    assert [ds.split(s).num_classes for s in SPLITS] == [4, 3, 3]
    _assert_disjoint(ds)
    raw = pickle.load(open(tmp_path / "mini-imagenet-cache-train.pkl", "rb"))  # noqa: S301 - our own test file
    tr = ds.train
    cls = tr.classes.index("ntr00001")
    idx = torch.nonzero(tr.labels == cls).flatten()
    assert idx.tolist() == [int(i) for i in raw["class_dict"]["ntr00001"]]
    got = tr.images.gather(idx.view(2, 3))
    assert got.shape == (2, 3, 3, 20, 20) and got.dtype == torch.uint8
    want = torch.from_numpy(raw["image_data"][idx.numpy()]).permute(0, 3, 1, 2)
    assert torch.equal(got.reshape(-1, 3, 20, 20), want)


def test_miniimagenet_resizes(tmp_path):
    _write_l2l_pickles(tmp_path)
    ds = miniimagenet(root=str(tmp_path), image_size=12)
    assert ds.test.images.gather(torch.tensor([0, 1])).shape == (2, 3, 12, 12)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    root = tmp_path / "mini"
    _write_l2l_pickles(root)
    with open(root / "mini-imagenet-cache-validation.pkl", "wb") as fh:
        pickle.dump({"image_data": evil, "class_dict": {"a": [0]}}, fh)
    with pytest.raises(metareg.DataError, match=r"refusing to unpickle the global (posix|os|nt)\.system"):
        miniimagenet(root=str(root))
    assert not marker.exists()
    # other dangerous globals are refused by name as well
    payload = pickle.dumps({"x": __import__("builtins").eval}, protocol=4)
    (tmp_path / "eval.pkl").write_bytes(payload)
    with pytest.raises(metareg.DataError, match="builtins.eval"):
        metareg.restricted_load(tmp_path / "eval.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(metareg.DataError, match="not a readable pickle"):
        metareg.restricted_load(tmp_path / "junk.pkl")


def test_miniimagenet_bad_contents_are_named(tmp_path):
    _write_l2l_pickles(tmp_path)
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as fh:
        pickle.dump({"image_data": np.zeros((4, 20, 20, 3), np.float32), "class_dict": {"a": [0, 1]}}, fh)
    with pytest.raises(metareg.DataError, match="uint8"):
        miniimagenet(root=str(tmp_path))
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as fh:
        pickle.dump({"image_data": np.zeros((4, 20, 20, 3), np.uint8), "class_dict": {"a": [0, 9]}}, fh)
    with pytest.raises(metareg.DataError, match="outside"):
        miniimagenet(root=str(tmp_path))


def test_miniimagenet_ravi_csv_split(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for split, fname, classes in [("train", "train.csv", 3), ("validation", "val.csv", 2), ("test", "test.csv", 2)]:
        lines = ["filename,label"]
        for c in range(classes):
            for k in range(3):
                name = f"n{split[:2]}{c:03d}{k:08d}.jpg"
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(images / name)
                lines.append(f"{name},n{split[:2]}{c:03d}")
        (tmp_path / fname).write_text("\n".join(lines) + "\n")
    ds = miniimagenet(root=str(tmp_path), format="csv", image_size=16)
    assert ds.info["format"] == "csv"
    assert [ds.split(s).num_classes for s in SPLITS] == [3, 2, 2]
    _assert_disjoint(ds)
    assert ds.train.images.gather(torch.tensor([[0, 4]])).shape == (1, 2, 3, 16, 16)
    (images / "nte00100000001.jpg").unlink()
    with pytest.raises(metareg.DataError, match="missing, e.g. .*nte00100000001.jpg"):
        miniimagenet(root=str(tmp_path), format="csv")


def test_miniimagenet_missing_and_download_without_checksums(tmp_path):
    with pytest.raises(metareg.DataError, match="mini-imagenet-cache-train.pkl not found"):
        miniimagenet(root=str(tmp_path))
    with pytest.raises(metareg.DataError, match="checksums=PATH"):
        miniimagenet(root=str(tmp_path), download=True)


def test_miniimagenet_download_checks_sums(tmp_path, monkeypatch):
    from metareg_datasets import miniimagenet as M

    served = tmp_path / "served"
    _write_l2l_pickles(served)
    monkeypatch.setattr(M, "MIRRORS", {s: [(served / f"mini-imagenet-cache-{s}.pkl").as_uri()] for s in SPLITS})
    sums = tmp_path / "SHA256SUMS"
    lines = [f"{hashlib.sha256((served / f'mini-imagenet-cache-{s}.pkl').read_bytes()).hexdigest()}  "
             f"mini-imagenet-cache-{s}.pkl" for s in SPLITS]
    sums.write_text("\n".join(lines) + "\n")
    bad = tmp_path / "BADSUMS"
    bad.write_text("\n".join(("0" * 64) + line[64:] for line in lines) + "\n")
    dest = tmp_path / "dest"
    with pytest.raises(metareg.DataError, match="checksum mismatch"):
        miniimagenet(root=str(dest), download=True, checksums=str(bad), image_size=20)
    assert not list(dest.glob("*.pkl"))
    ds = miniimagenet(root=str(dest), download=True, checksums=str(sums), image_size=20)
    assert ds.train.num_classes == 4


# ---------------------------------------------------------------- imagefolder


def _img(path: Path, color, size=(24, 18), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _class_tree(root: Path, classes=6, per=3, exts=(".png", ".jpg", ".bmp")):
    for c in range(classes):
        for k in range(per):
            _img(root / f"class{c}" / f"{k}{exts[k % len(exts)]}", (40 * c % 256, 10 * k, 200))


def test_imagefolder_auto_split_by_ratio(tmp_path):
    _class_tree(tmp_path, classes=10)
    ds = imagefolder(root=str(tmp_path), image_size=8, ratios=(0.6, 0.2, 0.2), seed=3)
    assert [ds.split(s).num_classes for s in SPLITS] == [6, 2, 2]
    _assert_disjoint(ds)
    assert set().union(*_classes(ds)) == {f"class{c}" for c in range(10)}
    x = ds.train.images.images
    assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.uint8
    again = imagefolder(root=str(tmp_path), image_size=8, seed=3)
    assert _classes(again) == _classes(ds)
    other = imagefolder(root=str(tmp_path), image_size=8, seed=4)
    assert _classes(other) != _classes(ds)
    # a pixel keeps its class's colour (labels line up with images)
    for i in range(len(ds.train)):
        c = int(ds.train.classes[ds.train.labels[i]].removeprefix("class"))
        assert abs(int(x[i, 0, 4, 4]) - 40 * c % 256) <= 2


def test_imagefolder_split_folders_and_grayscale(tmp_path):
    for split, names in [("train", "abc"), ("val", "de"), ("test", "fg")]:
        for n in names:
            for k in range(2):
                _img(tmp_path / split / n / f"{k}.png", 128, mode="L")
    _img(tmp_path / "train" / "a" / "x.gif", 255, mode="L")
    (tmp_path / "train" / "a" / "notes.txt").write_text("ignored")
    ds = imagefolder(root=str(tmp_path), image_size=6, channels=1)
    assert [sorted(ds.split(s).classes) for s in SPLITS] == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert ds.channels == 1 and ds.train.images.images.shape[1:] == (1, 6, 6)
    assert ds.train.counts().tolist() == [3, 2, 2]
    colour = imagefolder(root=str(tmp_path), image_size=6, channels=3)
    assert colour.train.images.images.shape[1:] == (3, 6, 6)


def test_imagefolder_same_class_in_two_split_folders_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        _img(tmp_path / split / f"only_{split}" / "0.png", 1)
    _img(tmp_path / "test" / "only_train" / "0.png", 1)
    with pytest.raises(metareg.DataError, match="only_train"):
        imagefolder(root=str(tmp_path))


def test_imagefolder_corrupt_image_is_named_at_build_time(tmp_path):
    _class_tree(tmp_path, classes=4)
    (tmp_path / "class2" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(metareg.DataError, match=r"class2.broken\.jpg"):
        imagefolder(root=str(tmp_path))
    with pytest.raises(metareg.DataError, match=r"class2.broken\.jpg"):
        imagefolder(root=str(tmp_path), lazy=True)


def test_imagefolder_empty_class_folder_is_named(tmp_path):
    _class_tree(tmp_path, classes=4)
    (tmp_path / "class_empty").mkdir()
    (tmp_path / "class_empty" / "readme.txt").write_text("no images here")
    with pytest.raises(metareg.DataError, match="class_empty has no images"):
        imagefolder(root=str(tmp_path))


def test_imagefolder_lazy_matches_eager(tmp_path):
    _class_tree(tmp_path, classes=5)
    eager = imagefolder(root=str(tmp_path), image_size=10)
    lazy = imagefolder(root=str(tmp_path), image_size=10, lazy=True)
    idx = torch.tensor([[0, 2], [1, 0]])
    assert torch.equal(eager.test.images.gather(idx), lazy.test.images.gather(idx))
    assert eager.test.images.gather(idx).shape == (2, 2, 3, 10, 10)


@pytest.mark.parametrize("bad, err", [
    (dict(root="/nonexistent/folder"), metareg.DataError),
    (dict(channels=2), metareg.OptionError),
    (dict(image_size=0), metareg.OptionError),
])
def test_imagefolder_bad_options(tmp_path, bad, err):
    _class_tree(tmp_path, classes=3)
    with pytest.raises(err):
        imagefolder(**{"root": str(tmp_path), **bad})


def test_imagefolder_too_few_classes(tmp_path):
    _class_tree(tmp_path, classes=2)
    with pytest.raises(metareg.DataError, match="at least 3"):
        imagefolder(root=str(tmp_path))


def test_imagefolder_gives_every_class_to_training_and_a_run_refuses_it(tmp_path):
    root = tmp_path / "data"
    _class_tree(root, classes=2)
    ds = imagefolder(root=str(root), image_size=8, ratios=(1, 0, 0))
    assert [ds.split(s).num_classes for s in SPLITS] == [2, 0, 0]
    assert sorted(ds.train.classes) == ["class0", "class1"] and len(ds.train) == 6
    with pytest.raises(metareg.DataError, match="at least 2 are needed to split classes into train"):
        imagefolder(root=str(_single(tmp_path / "one")), image_size=8, ratios=(1, 0, 0))
    # A run validates and tests on unseen classes: one line, exit 2, before any training or output.
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--dataset", "imagefolder", "--dataset-opt", f"root={root}",
                                      "--dataset-opt", "ratios=1,0,0", "--dataset-opt", "image_size=8",
                                      "--ways", "2", "--shots", "1", "--queries", "1", "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "the validation split has no images" in lines[0], result.output
    assert not out.exists()


def _single(root: Path) -> Path:
    _class_tree(root, classes=1)
    return root


# ---------------------------------------------------------------- in-memory arrays


def test_from_arrays_explicit_splits_numpy_hwc():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 10, 10, 3), dtype=np.uint8)
    y = np.repeat(np.arange(8), 5)
    ds = metareg.FewShotDataset.from_arrays(
        x, y, class_names=[f"c{i}" for i in range(8)], splits={"train": [0, 1, 2, 3], "validation": [4, 5],
                                                               "test": [6, 7]})
    assert (ds.channels, ds.image_size) == (3, 10)
    assert ds.train.classes == ["c0", "c1", "c2", "c3"] and ds.test.classes == ["c6", "c7"]
    tr = ds.train
    assert tr.images.images.shape == (20, 3, 10, 10)
    # sample order and content are preserved; labels remapped to local ids
    assert torch.equal(tr.images.images[5], torch.from_numpy(x[5]).permute(2, 0, 1))
    assert tr.labels.tolist() == np.repeat(np.arange(4), 5).tolist()
    assert torch.equal(ds.test.images.images[0], torch.from_numpy(x[30]).permute(2, 0, 1))


def test_from_arrays_auto_split_floats_and_grey():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 12, 12, generator=g)
    y = torch.arange(20).repeat_interleave(3)
    ds = metareg.FewShotDataset.from_arrays(x, y, ratios=(0.5, 0.25, 0.25), seed=1)
    assert ds.channels == 1 and ds.train.images.images.dtype == torch.uint8
    assert [ds.split(s).num_classes for s in SPLITS] == [10, 5, 5]
    _assert_disjoint(ds)
    assert sorted(int(c) for s in SPLITS for c in ds.split(s).classes) == list(range(20))
    same = metareg.FewShotDataset.from_arrays(x, y, ratios=(0.5, 0.25, 0.25), seed=1)
    assert _classes(same) == _classes(ds)
    first = int(ds.train.classes[0])
    assert torch.equal(ds.train.images.images[0, 0], (x[3 * first] * 255).round().to(torch.uint8))


def test_from_arrays_errors():
    x = np.zeros((6, 8, 8), np.uint8)
    with pytest.raises(metareg.DataError, match="labels"):
        metareg.FewShotDataset.from_arrays(x, np.arange(5))
    with pytest.raises(metareg.DataError, match="no images"):
        metareg.FewShotDataset.from_arrays(x, np.arange(6), splits={"train": [0, 1], "validation": [2],
                                                                    "test": [9]})
    with pytest.raises(metareg.DataError, match="both"):
        metareg.FewShotDataset.from_arrays(x, np.arange(6), splits={"train": [0, 1], "validation": [1],
                                                                    "test": [2]})
    with pytest.raises(metareg.DataError, match="square"):
        metareg.FewShotDataset.from_arrays(np.zeros((6, 8, 9), np.uint8), np.arange(6))
    with pytest.raises(metareg.DataError, match=r"\[0, 1\]"):
        metareg.FewShotDataset.from_arrays(np.full((6, 8, 8), 200.0), np.arange(6))
    with pytest.raises(metareg.DataError, match="non-negative"):
        metareg.FewShotDataset.from_arrays(x, np.array([0, 1, 2, 3, 4, -1]))
    with pytest.raises(metareg.DataError, match="class_names"):
        metareg.FewShotDataset.from_arrays(x, np.arange(6), class_names=["a", "b"])
