"""tieredimagenet: Ren et al.'s PNG pickles and the npz variant, restricted unpickling, checksums, counts."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from metareg_datasets import testfiles
from metareg_datasets.tieredimagenet import tieredimagenet

import metareg
from metareg.cli import cli

SPLITS = ("train", "validation", "test")
TINY = ["--ways", "2", "--shots", "1", "--queries", "1", "--meta-batch-size", "1", "--epoch-length", "1",
        "--max-epochs", "1", "--test-num-tasks", "2", "--val-num-tasks", "2", "--test-queries", "1",
        "--dataset-opt", "image_size=16", "--backbone-opt", "hidden=8", "--no-progress"]


def _refused(args, *needles):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_png_pickles_train_through_the_cli(tmp_path):
    root = testfiles.write_tiered(tmp_path / "data" / "tiered-imagenet", per_class=2, size=24)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--dataset", "tieredimagenet", "--dataset-opt",
                                      f"root={root.parent}", *TINY, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "tieredimagenet" and summary["episodes"] == 2


@pytest.mark.parametrize("format", ["png", "npz"])
def test_both_formats_give_the_splits_with_aligned_rgb_images(tmp_path, format):
    root = testfiles.write_tiered(tmp_path, format, classes=(4, 3, 3), categories=(2, 1, 1), per_class=3)
    ds = tieredimagenet(root=str(root))
    assert ds.info["format"] == format and ds.info.imagenet_derived and (ds.channels, ds.image_size) == (3, 84)
    assert [ds.split(s).num_classes for s in SPLITS] == [4, 3, 3]
    assert ds.train.classes == [f"train class {c}" for c in range(4)] and ds.test.classes[0] == "test class 0"
    assert "published 351 in 20" in ds.info["note"]
    for split in SPLITS:
        part = ds.split(split)
        index = torch.arange(len(part)).view(-1, 3)
        x = part.images.gather(index)
        assert x.shape == (len(part) // 3, 3, 3, 84, 84) and x.dtype == torch.uint8
        # red is 10 x the class id, green 255 - red: labels line up with images, channels are RGB
        red = x[..., 0, 0, 0].reshape(-1)
        assert red.tolist() == (10 * part.labels).tolist()
        assert (x[..., 1, 0, 0].reshape(-1) + red).eq(255).all()
    small = tieredimagenet(root=str(root), image_size=20)
    assert small.validation.images.gather(torch.tensor([[0, 4]])).shape == (1, 2, 3, 20, 20)


def test_npz_order_rgb_keeps_the_channels_as_stored(tmp_path):
    root = testfiles.write_tiered(tmp_path, "npz", per_class=1)
    bgr = tieredimagenet(root=str(root)).train.images.gather(torch.tensor([1]))
    kept = tieredimagenet(root=str(root), npz_order="rgb").train.images.gather(torch.tensor([1]))
    assert bgr[0, 0, 0, 0] == 10 and kept[0, 2, 0, 0] == 10 and torch.equal(bgr, kept.flip(1))


def test_published_counts_leave_no_note(tmp_path):
    root = testfiles.write_tiered(tmp_path, "png", classes=(351, 97, 160), categories=(20, 6, 8), per_class=1,
                                  size=8)
    ds = tieredimagenet(root=str(root), image_size=8)
    assert [ds.split(s).num_classes for s in SPLITS] == [351, 97, 160] and "note" not in ds.info


def test_missing_files_are_one_line_naming_the_source_and_root(tmp_path):
    _refused(["run", "--dataset", "tieredimagenet", "--dataset-opt", f"root={tmp_path}", *TINY,
              "--output-dir", str(tmp_path / "run")],
             "train_images_png.pkl not found", "github.com/renmengye/few-shot-ssl-public", "root=FOLDER")
    assert not (tmp_path / "run").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["val_labels.pkl", "test_images_png.pkl"])
def test_a_pickle_with_a_forbidden_global_is_refused_before_it_runs(tmp_path, victim):
    marker = tmp_path / "pwned"
    root = testfiles.write_tiered(tmp_path / "data", per_class=1, size=8)
    (root / victim).write_bytes(pickle.dumps([_Evil(marker)], protocol=2))
    _refused(["run", "--dataset", "tieredimagenet", "--dataset-opt", f"root={root}", *TINY,
              "--output-dir", str(tmp_path / "run")], victim, "refusing to unpickle the global")
    assert not marker.exists()


def test_checksums_option_verifies_every_file(tmp_path):
    root = testfiles.write_tiered(tmp_path / "data", per_class=1, size=8)
    files = sorted(p for p in root.iterdir())
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files))
    ds = tieredimagenet(root=str(root), checksums=str(sums), image_size=8)
    assert ds.info["verified"] is True
    victim = root / "test_labels.pkl"
    want = hashlib.sha256(victim.read_bytes()).hexdigest()
    victim.write_bytes(victim.read_bytes() + b"\0")
    got = hashlib.sha256(victim.read_bytes()).hexdigest()
    _refused(["run", "--dataset", "tieredimagenet", "--dataset-opt", f"root={root}", "--dataset-opt",
              f"checksums={sums}", *TINY, "--output-dir", str(tmp_path / "run")],
             "checksum mismatch", str(victim), f"sha256 is {got}", f"expected {want}")
    sums.write_text(sums.read_text().replace("  test_labels.pkl", "  other.pkl"))
    with pytest.raises(metareg.DataError, match="has no line for test_labels.pkl"):
        tieredimagenet(root=str(root), checksums=str(sums))


def test_damaged_contents_are_named(tmp_path):
    root = testfiles.write_tiered(tmp_path, per_class=2, size=8)
    labels = pickle.loads((root / "val_labels.pkl").read_bytes())  # a file this test wrote
    labels["label_specific"] = labels["label_specific"][:-1]
    (root / "val_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
    with pytest.raises(metareg.DataError, match="val_labels.pkl labels 5 images but the image file holds 6"):
        tieredimagenet(root=str(root))
    testfiles.write_tiered(root, per_class=2, size=8)
    images = pickle.loads((root / "test_images_png.pkl").read_bytes())
    images[3] = np.frombuffer(b"not a png", np.uint8)
    (root / "test_images_png.pkl").write_bytes(pickle.dumps(images, protocol=2))
    ds = tieredimagenet(root=str(root))  # decoding is lazy: the damage shows when the image is drawn
    assert ds.test.images.gather(torch.tensor([2])).shape == (1, 3, 84, 84)
    with pytest.raises(metareg.DataError, match=r"image 3 of .*test_images_png.pkl is not a readable PNG"):
        ds.test.images.gather(torch.tensor([1, 3]))
