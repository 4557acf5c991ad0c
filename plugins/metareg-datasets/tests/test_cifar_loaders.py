"""cifarfs and fc100: the published splits, the official CIFAR-100 archives, MetaOptNet's pickles, checksums."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from metareg_datasets import cifar100, cifar_splits, testfiles
from metareg_datasets.cifar_fewshot import cifarfs, fc100

import metareg
from metareg.cli import cli

SPLITS = ("train", "validation", "test")
FACTORIES = {"cifarfs": cifarfs, "fc100": fc100}
TINY = ["--ways", "3", "--shots", "1", "--queries", "1", "--meta-batch-size", "1", "--epoch-length", "1",
        "--max-epochs", "1", "--test-num-tasks", "2", "--val-num-tasks", "2", "--test-queries", "1", "--no-progress"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archives(tmp_path, monkeypatch):
    """Fake official archives (2 images per class), with the published MD5s pointed at them (the test hook)."""
    made = {"binary": testfiles.write_cifar100_binary(tmp_path / "binary"),
            "python": testfiles.write_cifar100_python(tmp_path / "python")}
    for version, path in made.items():
        monkeypatch.setitem(cifar100.ARCHIVES[version], "digest", {"md5": _md5(path)})
    return made


def _refused(args, *needles):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- the published lists


def test_the_split_lists_are_the_published_ones():
    fine = set(cifar_splits.FINE_NAMES)
    assert len(fine) == 100 and len(cifar_splits.COARSE_NAMES) == 20
    for name, sizes in (("cifarfs", (64, 16, 20)), ("fc100", (60, 20, 20))):
        parts = [set(cifar_splits.SPLITS[name][s]) for s in SPLITS]
        assert tuple(map(len, parts)) == sizes
        assert set().union(*parts) == fine and sum(map(len, parts)) == 100  # disjoint, all 100 classes
    # FC100: whole superclasses, TADAM's ids (0 aquatic_mammals, 7 insects, 12 medium_mammals, 14 people for test)
    coarse = [{cifar_splits.COARSE_OF[f] for f in cifar_splits.FC100[s]} for s in SPLITS]
    assert [len(c) for c in coarse] == [12, 4, 4]
    assert coarse[2] == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert coarse[1] == {"large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
                         "small_mammals"}
    # CIFAR-FS (Bertinetto et al.'s test.txt) spans superclasses; spot-check its test and validation lists
    assert {"baby", "bed", "bicycle", "chimpanzee", "whale", "worm"} <= set(cifar_splits.CIFAR_FS["test"])
    assert {"beaver", "otter", "shark", "tractor"} <= set(cifar_splits.CIFAR_FS["validation"])


# ------------------------------------------------------------------------------------- official archives


def test_cifarfs_trains_from_the_binary_archive_through_the_cli(tmp_path, monkeypatch):
    path = testfiles.write_cifar100_binary(tmp_path / "data", per_class=2)
    monkeypatch.setitem(cifar100.ARCHIVES["binary"], "digest", {"md5": _md5(path)})
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--dataset", "cifarfs", "--dataset-opt", f"root={path.parent}", *TINY,
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifarfs" and summary["episodes"] == 2
    assert summary["components"]["dataset"]["options"]["format"] == "auto"


@pytest.mark.parametrize("version", ["binary", "python"])
@pytest.mark.parametrize("name", ["cifarfs", "fc100"])
def test_archives_give_the_published_splits(archives, name, version):
    ds = FACTORIES[name](root=str(archives[version].parent))
    assert ds.info["format"] == version and (ds.channels, ds.image_size) == (3, 32) and not ds.info.imagenet_derived
    for split in SPLITS:
        part = ds.split(split)
        assert list(part.classes) == list(cifar_splits.SPLITS[name][split])
        assert part.counts().tolist() == [2] * part.num_classes  # one training-set and one test-set image each
        x = part.images.gather(torch.arange(len(part)))
        assert x.shape == (len(part), 3, 32, 32) and x.dtype == torch.uint8
        # the red plane holds the image's CIFAR-100 class id: every label names its own image's class
        names = [part.classes[i] for i in part.labels.tolist()]
        assert x[:, 0, 0, 0].tolist() == [cifar_splits.FINE_NAMES.index(n) for n in names]
        # green: the image's index within its class; CIFAR-100's training-set images come first, then its test set
        assert x[:, 1, 5, 5].tolist() == [0] * part.num_classes + [1] * part.num_classes
    assert "differ from CIFAR-100's 600" in ds.info["note"]


def test_image_size_resizes(archives):
    ds = fc100(root=str(archives["binary"].parent), image_size=16)
    assert ds.test.images.gather(torch.tensor([[0, 1]])).shape == (1, 2, 3, 16, 16)
    with pytest.raises(metareg.OptionError, match="image_size"):
        fc100(root=str(archives["binary"].parent), image_size=4)


def test_extracted_folders_are_read_and_python_files_are_md5_checked(archives, tmp_path, monkeypatch):
    for version in ("binary", "python"):
        with tarfile.open(archives[version]) as tar:
            tar.extractall(tmp_path / f"x{version}", filter="data")
    folder = tmp_path / "xpython" / "cifar-100-python"
    for member in ("train", "test", "meta"):
        monkeypatch.setitem(cifar100.MEMBERS["python"], member, {"md5": _md5(folder / member)})
    ds = cifarfs(root=str(tmp_path / "xpython"))
    assert ds.info["format"] == "python" and ds.test.num_classes == 20
    binary = cifarfs(root=str(tmp_path / "xbinary" / "cifar-100-binary"))
    assert "no per-file digest is published" in binary.info["note"]
    # a python member that is not the published file is refused by its digest
    with open(folder / "meta", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(metareg.DataError, match=r"checksum mismatch for .*meta: md5 is [0-9a-f]{32}, expected"):
        cifarfs(root=str(tmp_path / "xpython"))


def test_a_corrupted_archive_is_refused_naming_file_and_both_hashes(archives, tmp_path):
    path = archives["binary"]
    good = _md5(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    line = _refused(["run", "--dataset", "fc100", "--dataset-opt", f"root={path.parent}", *TINY,
                     "--output-dir", str(tmp_path / "run")],
                    str(path), f"md5 is {_md5(path)}", f"expected {good}")
    assert "checksum mismatch" in line and not (tmp_path / "run").exists()


def test_the_published_md5_is_checked_when_no_test_hook_is_set(tmp_path):
    path = testfiles.write_cifar100_binary(tmp_path)  # a well-formed archive, but not the published one
    _refused(["run", "--dataset", "cifarfs", "--dataset-opt", f"root={tmp_path}", *TINY,
              "--output-dir", str(tmp_path / "run")],
             "checksum mismatch", str(path), "expected 03b5dce01913d631647c71ecec9e9cb8")


def test_missing_data_is_one_line_naming_where_to_get_it(tmp_path):
    _refused(["run", "--dataset", "cifarfs", "--dataset-opt", f"root={tmp_path / 'none'}", *TINY,
              "--output-dir", str(tmp_path / "run")],
             "no CIFAR-100 data found", "https://www.cs.toronto.edu/~kriz/cifar.html", "root=FOLDER",
             "CIFAR_FS_{train,val,test}.pickle")
    _refused(["run", "--dataset", "fc100", "--dataset-opt", f"root={tmp_path}", "--dataset-opt", "format=pickle",
              *TINY, "--output-dir", str(tmp_path / "run")], "FC100_train.pickle not found")


def test_download_is_md5_checked_before_it_is_kept(tmp_path, monkeypatch):
    served = testfiles.write_cifar100_binary(tmp_path / "served")
    monkeypatch.setitem(cifar100.ARCHIVES["binary"], "url", served.as_uri())
    dest = tmp_path / "dest"
    with pytest.raises(metareg.DataError, match="checksum mismatch"):
        cifarfs(root=str(dest), download=True)  # the published digest: the fake is refused
    assert not list(dest.glob("*"))
    monkeypatch.setitem(cifar100.ARCHIVES["binary"], "digest", {"md5": _md5(served)})
    ds = cifarfs(root=str(dest), download=True)
    assert (dest / "cifar-100-binary.tar.gz").is_file() and ds.train.num_classes == 64


# ------------------------------------------------------------------------------------- MetaOptNet's pickles


@pytest.mark.parametrize("name", ["cifarfs", "fc100"])
def test_metaoptnet_pickles(tmp_path, name):
    testfiles.write_metaoptnet_pickles(tmp_path, name)
    ds = FACTORIES[name](root=str(tmp_path))
    assert ds.info["format"] == "pickle"
    for split in SPLITS:
        part = ds.split(split)
        assert list(part.classes) == list(cifar_splits.SPLITS[name][split])
        x = part.images.gather(torch.arange(len(part)).view(-1, 2))
        assert x.shape == (len(part) // 2, 2, 3, 32, 32)
        names = [part.classes[i] for i in part.labels.tolist()]
        assert x.reshape(-1, 3, 32, 32)[:, 0, 0, 0].tolist() == [cifar_splits.FINE_NAMES.index(n) for n in names]


def test_a_pickle_of_the_wrong_classes_is_refused(tmp_path):
    testfiles.write_metaoptnet_pickles(tmp_path, "cifarfs")
    path = tmp_path / "CIFAR_FS_train.pickle"
    data = pickle.loads(path.read_bytes())  # a file this test wrote
    data["labels"] = [cifar_splits.FINE_NAMES.index("whale") if label == 0 else label for label in data["labels"]]
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(metareg.DataError, match=r"not hold the published CIFAR-FS train classes: unexpected "
                                                r"\['whale'\]; missing \['apple'\]"):
        cifarfs(root=str(tmp_path))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_a_forbidden_global_is_refused_before_it_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    root = testfiles.write_metaoptnet_pickles(tmp_path / "mo", "fc100")
    (root / "FC100_val.pickle").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2))
    _refused(["run", "--dataset", "fc100", "--dataset-opt", f"root={root}", *TINY,
              "--output-dir", str(tmp_path / "run")], "FC100_val.pickle", "refusing to unpickle the global")
    # the same inside an official python archive whose MD5 the test hook accepts
    archive = tmp_path / "py" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for member in ("train", "test", "meta"):
            payload = pickle.dumps({"data": _Evil(marker)}, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    monkeypatch.setitem(cifar100.ARCHIVES["python"], "digest", {"md5": _md5(archive)})
    with pytest.raises(metareg.DataError, match=r"refusing to unpickle the global (posix|os|nt)\.system"):
        cifarfs(root=str(archive.parent))
    assert not marker.exists()


def test_a_torn_record_in_the_binary_archive_is_refused(tmp_path, monkeypatch):
    path = testfiles.write_cifar100_binary(tmp_path)
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["cifar-100-binary/train.bin"] = members["cifar-100-binary/train.bin"][:-1]  # a torn record
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setitem(cifar100.ARCHIVES["binary"], "digest", {"md5": _md5(path)})
    with pytest.raises(metareg.DataError, match="not whole 3074-byte records"):
        cifarfs(root=str(tmp_path))
