"""`metareg shard` and the `shards` dataset, through the CLI: the same episodes as in memory, bad folders refused."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import cli

# The glyphs of tests/test_run.py (cached once for the suite): 14 px, 6 renderings per class.
DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
TINY = ["--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2",
        "--meta-batch-size", "2", "--epoch-length", "3", "--max-epochs", "1", "--test-num-tasks", "12",
        "--val-num-tasks", "6", "--eval-meta-batch-size", "6", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "glyphs"
    result = invoke("shard", "glyphs", str(out), *DATA, "--chunk-mb", "1")
    assert result.exit_code == 0, result.output
    return out


def copy_of(sharded: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(sharded, tmp_path / "copy"))


def test_shard_writes_every_split_with_its_class_index(sharded):
    index = json.loads((sharded / "metareg-shards.json").read_text())
    assert index["dataset"] == "glyphs" and index["image_size"] == 14 and index["channels"] == 1
    for split in ("train", "validation", "test"):
        labels = np.load(sharded / "labels" / f"{split}.npy", allow_pickle=False)
        assert np.bincount(labels).tolist() == index["splits"][split]["counts"]
        assert (sharded / split / "index.json").is_file() and list((sharded / split).glob("chunk-*.bin"))
    assert not list(sharded.parent.glob(".*tmp"))  # the staging folder became the shard folder


def test_the_sharded_dataset_gives_the_same_episodes_and_results_as_in_memory(sharded, tmp_path):
    memory, streamed = tmp_path / "memory", tmp_path / "streamed"
    first = invoke("run", *DATA, *TINY, "--output-dir", str(memory))
    assert first.exit_code == 0, first.output
    second = invoke("run", "--dataset", "shards", "--dataset-opt", f"root={sharded}", *TINY,
                    "--output-dir", str(streamed))
    assert second.exit_code == 0, second.output
    # Same training batches (same weights after training), same validation and test episodes.
    assert (streamed / "test_episodes.csv").read_text() == (memory / "test_episodes.csv").read_text()
    assert json.loads((streamed / "summary.json").read_text())["accuracy"] == \
        json.loads((memory / "summary.json").read_text())["accuracy"]


def test_the_shards_dataset_keeps_the_dataset_contract_and_every_image(sharded):
    from metareg.testing import check_dataset

    streamed = check_dataset("shards", options={"root": str(sharded)}, min_samples_per_class=6)
    from metareg_datasets.glyphs import glyphs

    memory = glyphs(image_size=14, samples_per_class=6)
    for split in ("train", "test"):
        a, b = memory.split(split), streamed.split(split)
        assert list(a.classes) == list(b.classes) and torch.equal(a.labels, b.labels)
        index = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))[:300].view(3, 100)
        assert torch.equal(a.images.gather(index), b.images.gather(index))
    assert streamed.info.invert == memory.info.invert


def test_shard_refuses_a_folder_that_is_not_empty_and_writes_nothing(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    line = one_error_line(invoke("shard", "glyphs", str(out), *DATA))
    assert str(out) in line and "not empty" in line
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_shard_fills_an_empty_folder_and_leaves_nothing_half_written_on_failure(tmp_path):
    from metareg.shard_writer import write_shards

    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    data = metareg.FewShotDataset.from_arrays(images, torch.arange(10).repeat_interleave(4),
                                              splits={"train": range(6), "validation": [6, 7], "test": [8, 9]})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_shards(data, empty, source="arrays", options={}) == {"train": 24, "validation": 8, "test": 8}
    assert (empty / "metareg-shards.json").is_file()

    def broken(index):
        raise OSError("disk went away")

    data.test.images.gather = broken  # fails after train and validation were written
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(OSError, match="disk went away"):
        write_shards(data, target, source="arrays", options={})
    assert target.is_dir() and not any(target.iterdir())  # the user's empty folder, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "target"]  # no staging folder left


def _run_on(root: Path, tmp_path: Path):
    return invoke("run", "--dataset", "shards", "--dataset-opt", f"root={root}", *TINY,
                  "--output-dir", str(tmp_path / "run"))


def test_a_folder_that_is_not_a_shard_folder_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "photo.png").write_bytes(b"not shards")
    line = one_error_line(_run_on(plain, tmp_path))
    assert "is not a shard folder" in line and "metareg shard" in line
    assert "is not a folder" in one_error_line(_run_on(tmp_path / "missing", tmp_path))
    assert "root=DIR" in one_error_line(invoke("run", "--dataset", "shards", *TINY))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "is 100 bytes, its index says"),
    ("drop_index", "train/index.json is missing"),
    ("labels", "labels/validation.npy holds int64 ("),
    ("counts", "labels/validation.npy does not match the images per class"),
    ("json", "metareg-shards.json is unreadable"),
])
def test_a_damaged_shard_folder_fails_the_format_check(sharded, tmp_path, damage, message):
    root = copy_of(sharded, tmp_path)
    if damage == "truncate":
        chunk = sorted((root / "train").glob("chunk-*.bin"))[0]
        chunk.write_bytes(chunk.read_bytes()[:100])
    elif damage == "drop_index":
        (root / "train" / "index.json").unlink()
    elif damage == "labels":
        labels = np.load(root / "labels" / "validation.npy")
        np.save(root / "labels" / "validation.npy", labels[:-1])
    elif damage == "counts":
        labels = np.load(root / "labels" / "validation.npy")
        labels[0] = labels[-1]
        np.save(root / "labels" / "validation.npy", labels)
    else:
        (root / "metareg-shards.json").write_text("{")
    line = one_error_line(_run_on(root, tmp_path))
    assert message in line and str(root) in line and "metareg shard" in line


def test_images_that_disagree_with_the_class_index_are_refused_when_read(sharded, tmp_path):
    # Labels of two classes swapped: counts agree, so the folder opens, but the images are not the ones indexed.
    root = copy_of(sharded, tmp_path)
    labels = np.load(root / "labels" / "test.npy")
    a, b = np.nonzero(labels == 0)[0], np.nonzero(labels == 1)[0]
    labels[a], labels[b] = 1, 0
    np.save(root / "labels" / "test.npy", labels)
    from metareg.shard_reader import shards

    with pytest.raises(metareg.DataError, match="is source image .* the class index expects image"):
        shards(root=str(root)).test.images.gather(torch.tensor(a))


def test_import_and_list_do_not_import_litdata():
    code = ("import sys, metareg; from metareg.cli import main\n"
            "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('litdata', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "shards" in out and "HEAVY []" in out, out


@pytest.mark.slow
def test_bench_shards_quick_mode_prints_memory_speed_and_same_episodes(tmp_path):
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_shards.py"
    args = ["--datasets", "glyphs", "--glyphs-opt", "image_size=14", "--glyphs-opt", "samples_per_class=6",
            "--shots", "1", "--queries", "2", "--episodes", "4", "--batch", "2", "--pairs", "2", "--memory-pairs", "1",
            "--work", str(tmp_path / "work")]
    proc = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "glyphs same episodes, image for image: yes" in lines, proc.stdout
    assert sum(" peak RSS " in line for line in lines) == 2, proc.stdout
    speed = next(line for line in lines if line.startswith("glyphs episodes/s (5-way 1-shot 2-query"))
    ratio, lo, hi = map(float, re.search(r" = (\d+\.\d\d)x \[95% CI (\d+\.\d\d)-(\d+\.\d\d)x\]", speed).groups())
    assert ratio > 0 and 0 < lo <= hi
