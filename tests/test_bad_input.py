"""A user's mistake gets one clear line and exit status 2, before any work starts or any file is written.

Each case is typed the way a user types it (``metareg run ...`` through click's runner);
each asserts the message names the value and the way out, and that nothing was created.
"""
from __future__ import annotations

import math
import struct
import typing
import zlib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from metareg.cli import cli
from metareg.config import BOUNDS, RunConfig
from metareg.errors import ConfigError

# glyphs at 14 px with 6 renderings per class: generated once into the test cache, then fast.
DATA = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6"]
TRAIN = ["--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2",
         "--meta-batch-size", "2", "--epoch-length", "2", "--max-epochs", "1", "--test-num-tasks", "4",
         "--val-num-tasks", "2", "--eval-meta-batch-size", "2", "--no-progress"]
TINY = [*DATA, *TRAIN]


def metareg(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def refused(result, *needles: str) -> str:
    """The one error line of a refused command, after checking exit status 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_refused(tmp_path: Path, *args: str, needles: tuple[str, ...], base: list[str] = TINY) -> str:
    out = tmp_path / "run"
    line = refused(metareg("run", *base, *args, "--output-dir", str(out)), *needles)
    assert not out.exists(), "a refused run must not create its run directory"
    return line


# ----------------------------------------------------------------------------- numeric settings


def _numeric(name: str) -> set[type]:
    tp = typing.get_type_hints(RunConfig)[name]
    return {a for a in (typing.get_args(tp) or (tp,)) if a in (int, float)}


NUMERIC = [f.name for f in fields(RunConfig) if _numeric(f.name)]


def test_every_numeric_setting_has_a_bound():
    # a new int or float setting without a bound would accept nan, inf or 10**40
    assert NUMERIC and set(NUMERIC) <= set(BOUNDS), sorted(set(NUMERIC) - set(BOUNDS))


def _bad_values(name: str) -> list[str]:
    bound = BOUNDS[name]
    if float in _numeric(name):
        values = ["nan", "inf", "-inf", "1e39", repr(bound.high * 2 if bound.high else 1.0)]
        values.append(repr(bound.low) if bound.low_open else repr(bound.low - 1))
    else:
        below = bound.low - 1
        while below in bound.sentinels:
            below -= 1
        values = [str(int(below)), str(int(bound.high) + 1), str(10**40)]
    return values


BAD = [(name, value) for name in NUMERIC for value in _bad_values(name)]
# the cases seen ending in a traceback
BAD += [("lr", "nan"), ("lr", "inf"), ("lr", "1e39"), ("seed", "-5"), ("momentum", "-1"),
        ("gradient_clip_val", "nan")]


@pytest.mark.parametrize("name, value", sorted(set(BAD)))
def test_numeric_setting_out_of_range_is_refused(tmp_path, name, value):
    flag = "--" + name.replace("_", "-")
    run_refused(tmp_path, flag, value, needles=(f"{name} must be", flag, "got "))


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_setting_at_its_limits_is_accepted(name):
    bound = BOUNDS[name]
    integer = float not in _numeric(name)
    low = bound.low if not bound.low_open else (bound.low + 1e-6 if not integer else bound.low + 1)
    high = bound.high if not bound.high_open else bound.high - (1 if integer else 1e-6)
    for value in (low, high, *bound.sentinels):
        text = str(int(value)) if integer else repr(float(value))
        extra = ["--max-steps", "5"] if name == "max_epochs" and value == -1 else []
        result = metareg("run", "--" + name.replace("_", "-"), text, *extra, "--print-config")
        assert result.exit_code == 0, result.output
        shown = RunConfig.from_sources({name: text, "max_steps": 5} if extra else {name: text})
        got = getattr(shown, name)
        got = got[0] if isinstance(got, list) else got  # a list setting (milestones) given one value
        assert got == value or math.isclose(got, value)


def test_config_file_values_are_checked_like_options(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("lr: .nan\n")
    run_refused(tmp_path, "--config", str(cfg), needles=("lr must be a finite number", "got nan"))


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize("content, needles", [
    (b"\xff\xfe\x00\x01\x02binary", ("exp.yaml' is not UTF-8 text", "byte 0xff at offset 0", "saved as UTF-8")),
    (b"lr: 0.1\nnote: caf\xe9\n", ("exp.yaml' is not UTF-8 text", "byte 0xe9", "saved as UTF-8")),
    (b"lr: 0.1\n\x00\x01\x02", ("exp.yaml' is not valid YAML", "unacceptable character")),
    (b"lr: [1\n", ("exp.yaml' is not valid YAML at line 2, column 1",)),
    (b"1: 2\n", ("setting names must be text, got 1",)),
    (b"strategy_options:\n  3: 1\n", ("strategy_options: option names must be text",)),
])
def test_unreadable_config_file_is_refused(tmp_path, content, needles):
    cfg = tmp_path / "exp.yaml"
    cfg.write_bytes(content)
    run_refused(tmp_path, "--config", str(cfg), needles=needles)


def test_saved_settings_errors_name_the_file():
    with pytest.raises(ConfigError, match=r"settings stored in 'x/last\.ckpt': lr must be"):
        RunConfig.from_saved({"lr": float("nan")}, "x/last.ckpt")
    with pytest.raises(ConfigError, match=r"stored in 'x/last\.ckpt' are list, not a mapping"):
        RunConfig.from_saved([1, 2], "x/last.ckpt")
    assert RunConfig.from_saved({"lr": 0.5}, "x", {"seed": 3}).seed == 3


# ----------------------------------------------------------------------------- hardware


@pytest.fixture
def no_gpu(monkeypatch):
    from metareg import hardware

    monkeypatch.setattr(hardware, "_cuda_count", lambda: 0)
    monkeypatch.setattr(hardware, "_mps_available", lambda: False)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu_is_refused(tmp_path, no_gpu, accelerator):
    run_refused(tmp_path, "--accelerator", accelerator,
                needles=(f"accelerator {accelerator!r} needs a GPU", "use --accelerator cpu"))


def test_more_gpus_than_the_machine_has_are_refused(tmp_path, monkeypatch):
    from metareg import hardware

    monkeypatch.setattr(hardware, "_cuda_count", lambda: 1)
    run_refused(tmp_path, "--accelerator", "gpu", "--devices", "4", needles=("asks for 4 GPUs", "has 1"))
    run_refused(tmp_path, "--accelerator", "gpu", "--devices", "0,2", needles=("GPU ids [0, 2]", "--devices 1"))


@pytest.mark.parametrize("name, needles", [
    ("bogus", ("trainer_strategy 'bogus' is not one of Lightning's strategies", "ddp_spawn")),
    ("dpp", ("Did you mean 'ddp'?",)),
])
def test_unknown_trainer_strategy_is_refused(tmp_path, name, needles):
    run_refused(tmp_path, "--trainer-strategy", name, needles=needles)


CLUSTER_VARIABLES = ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE",
                     "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_RANK")


def test_several_nodes_without_a_cluster_are_refused_instead_of_hanging(tmp_path, monkeypatch):
    import metareg.run

    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def work_started(*args, **kwargs):
        raise AssertionError("the run started (and would wait forever for the second node) before the check")

    monkeypatch.setattr(metareg.run, "prepare", work_started)
    run_refused(tmp_path, "--num-nodes", "2",
                needles=("num_nodes 2 needs a cluster environment", "MASTER_ADDR", "--num-nodes 1"))


@pytest.mark.parametrize("environ, launcher", [
    ({}, None),
    ({"TORCHELASTIC_RUN_ID": "x"}, "torchrun / torchelastic"),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train"}, "SLURM (srun)"),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "interactive"}, None),  # Lightning ignores interactive SLURM
    ({"MASTER_ADDR": "10.0.0.1", "NODE_RANK": "1"}, "MASTER_ADDR and NODE_RANK"),
    ({"MASTER_ADDR": "10.0.0.1"}, None),  # without a node rank every node would think it is node 0
])
def test_cluster_launcher_is_detected_from_the_environment(environ, launcher):
    from metareg.hardware import check_nodes, cluster_launcher

    assert cluster_launcher(environ) == launcher
    if launcher is None:
        with pytest.raises(ConfigError, match="needs a cluster environment"):
            check_nodes(2, environ)
    else:
        check_nodes(2, environ)
    check_nodes(1, environ)  # one node needs no cluster


# ----------------------------------------------------------------------------- images

SIDE = 32


def _gradient16() -> np.ndarray:
    """A 16-bit grey gradient over the whole range: 8-bit scaled mean about 127, clipped mean about 254."""
    return np.linspace(0, 65535, SIDE * SIDE).round().astype(np.uint16).reshape(SIDE, SIDE)


def _write_16bit_png(path: Path) -> float:
    Image.fromarray(_gradient16()).save(path)
    assert Image.open(path).mode == "I;16"
    return float((_gradient16() * (255 / 65535)).mean())


def _write_16bit_pgm(path: Path) -> float:
    path.write_bytes(b"P5 %d %d 65535\n" % (SIDE, SIDE) + _gradient16().astype(">u2").tobytes())
    assert Image.open(path).mode == "I"
    return float((_gradient16() * (255 / 65535)).mean())


def _write_float_tiff(path: Path) -> float:
    values = np.linspace(0, 1, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    return float(values.mean() * 255)


HIGH_BIT_DEPTH = {"png-I;16": (".png", _write_16bit_png), "pgm-I": (".pgm", _write_16bit_pgm),
                  "tiff-F": (".tiff", _write_float_tiff)}


def _image_folder(root: Path, suffix: str, write, classes: int = 3, per_class: int = 2) -> float:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            expected = write(root / f"class{c}" / f"{i}{suffix}")
    return expected


@pytest.mark.parametrize("kind", HIGH_BIT_DEPTH)
@pytest.mark.parametrize("channels", [1, 3])
def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, kind, channels):
    from metareg_datasets.imagefolder import imagefolder

    import metareg
    from metareg.predict import load_image

    suffix, write = HIGH_BIT_DEPTH[kind]
    expected = _image_folder(tmp_path, suffix, write)
    one = next(tmp_path.rglob(f"*{suffix}"))
    clipped = np.asarray(Image.open(one).convert("L"), dtype=np.float64).mean()
    # what a clipping conversion gives is far from the scaled source, so the assertions below can fail
    assert abs(clipped - expected) > 50, (clipped, expected)

    ds = imagefolder(root=str(tmp_path), image_size=SIDE, channels=channels, ratios=(1, 1, 1))
    for split in (ds.train, ds.validation, ds.test):
        pixels = split.images.gather(np.arange(len(split.labels)).tolist()).double()
        assert pixels.shape[1:] == (channels, SIDE, SIDE)
        assert abs(pixels.mean().item() - expected) < 0.5
    predicted = load_image(one, channels, SIDE).double()
    assert abs(predicted.mean().item() - expected) < 0.5
    assert torch.equal(metareg.read_image(one, channels, SIDE), load_image(one, channels, SIDE))


def test_scaling_is_shown_to_fail_with_a_clipping_conversion(tmp_path, monkeypatch):
    # the mutation the test above guards against: convert high-bit-depth images the way Pillow clips them
    from metareg import images
    from metareg.predict import load_image

    expected = _write_16bit_png(tmp_path / "g.png")
    monkeypatch.setattr(images, "to_8bit", lambda image, name="image": image)
    assert abs(load_image(tmp_path / "g.png", 1, SIDE).double().mean().item() - expected) > 50


@pytest.mark.parametrize("values, needle", [
    (np.full((8, 8), 2.5, np.float32), "floating-point image with values from 2.5 to 2.5"),
    (np.full((8, 8), np.nan, np.float32), "floating-point image"),
    (np.full((8, 8), 70000, np.int32), "32-bit integer image with values from 70000"),
])
def test_high_bit_depth_images_out_of_range_are_refused_by_name(tmp_path, values, needle):
    from metareg.errors import DataError
    from metareg.predict import load_image

    path = tmp_path / "odd.tiff"
    Image.fromarray(values).save(path)
    with pytest.raises(DataError, match=needle) as info:
        load_image(path, 1, 8)
    assert str(path) in str(info.value)


def test_exif_orientation_is_applied(tmp_path):
    from metareg.images import open_image

    # stored 8 wide, 4 high, left half black; EXIF 6 means "rotate 90 degrees clockwise to view"
    pixels = np.zeros((4, 8), np.uint8)
    pixels[:, 4:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif)
    upright = np.asarray(open_image(tmp_path / "sideways.png"))
    assert upright.shape == (8, 4)
    assert upright[:4].max() == 0 and upright[4:].min() == 255  # black on top after turning


def _png_header_bomb(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height grey pixels (Pillow checks the size when opening)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_in_an_image_folder_is_refused_by_name(tmp_path):
    root = tmp_path / "images"
    _image_folder(root, ".png", lambda p: Image.new("L", (8, 8), 128).save(p))
    bomb = root / "class1" / "bomb.png"
    _png_header_bomb(bomb, 30000, 30000)
    line = run_refused(tmp_path, "--dataset", "imagefolder", "--dataset-opt", f"root={root}",
                       needles=(str(bomb), "has 900000000 pixels", "MAX_IMAGE_PIXELS = 89478485", "shrink or remove"),
                       base=TRAIN)
    assert "imagefolder" in line
    # lazy loading checks every file up front too
    run_refused(tmp_path, "--dataset", "imagefolder", "--dataset-opt", f"root={root}", "--dataset-opt", "lazy=true",
                needles=(str(bomb), "MAX_IMAGE_PIXELS"), base=TRAIN)


def test_image_over_the_warning_limit_is_refused_too(tmp_path, monkeypatch):
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; metareg refuses from the limit on
    from metareg.errors import DataError
    from metareg.predict import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (40, 40)).save(tmp_path / "big.png")  # 1600 pixels: between the limit and twice it
    limit = r"big\.png. has 1600 pixels, more than the limit PIL\.Image\.MAX_IMAGE_PIXELS = 1000 "
    with pytest.raises(DataError, match=limit):
        load_image(tmp_path / "big.png", 1, 8)


# ----------------------------------------------------------------------------- dataset files


def test_omniglot_zip_with_a_corrupt_member_is_refused_by_name(tmp_path):
    import io
    import zipfile

    archive = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for alphabet in ("Alpha", "Beta", "Gamma"):
            for character in ("character01", "character02"):
                for k in range(2):
                    png = io.BytesIO()
                    Image.new("L", (105, 105), 255).save(png, "PNG")
                    zf.writestr(f"images_background/{alphabet}/{character}/{k}.png", png.getvalue())
    victim = "images_background/Beta/character02/1.png"
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(victim)
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size - 1] ^= 0xFF  # one flipped byte: the member's CRC-32 no longer matches
    archive.write_bytes(bytes(raw))
    run_refused(tmp_path, "--dataset", "omniglot", "--dataset-opt", f"root={tmp_path}", base=TRAIN,
                needles=(str(archive), victim, "Bad CRC-32", "get it again"))


@pytest.mark.parametrize("dataset", ["miniimagenet", "l2l-miniimagenet"])
@pytest.mark.parametrize("indices, needle", [
    ([0, 1, 99], "lists image indices outside [0, 6)"),
    ([0, -1], "lists image indices outside [0, 6)"),  # would wrap around silently
    ([0, 2], "shares images with another class"),
])
def test_miniimagenet_pickle_with_bad_indices_is_refused(tmp_path, dataset, indices, needle):
    import pickle

    from metareg.plugins import get_plugins
    from metareg.registry import Registry

    if dataset not in Registry(get_plugins()).names("datasets"):
        pytest.skip(f"{dataset} is not installed")
    root = tmp_path / "mini"
    root.mkdir()
    for split in ("train", "validation", "test"):
        class_dict = {"n01": [2, 3], "n02": [4, 5], "n03": indices} if split == "train" else \
            {"n01": [0, 1], "n02": [2, 3], "n03": [4, 5]}
        data = {"image_data": np.zeros((6, 8, 8, 3), np.uint8), "class_dict": class_dict}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data))  # a file this test created
    run_refused(tmp_path, "--dataset", dataset, "--dataset-opt", f"root={root}", base=TRAIN,
                needles=("mini-imagenet-cache-train.pkl", "class 'n03'", needle, "download it again"))


# ----------------------------------------------------------------------------- glyphs cache

GLYPHS = {"image_size": 14, "samples_per_class": 6}  # the options of DATA


@pytest.fixture(scope="module")
def good_glyphs():
    from metareg_datasets import glyphs

    return glyphs.load_arrays(**GLYPHS)  # from the shared test cache after the first test run


@pytest.fixture
def glyphs_cache(tmp_path, monkeypatch, good_glyphs):
    """A private cache folder, and a generator that returns the good arrays without rendering (and counts calls)."""
    from metareg_datasets import glyphs

    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def generate(**opts):
        calls.append(opts)
        return {k: v.copy() for k, v in good_glyphs.items() if k != "generation_seconds"}

    monkeypatch.setattr(glyphs, "generate", generate)
    path = glyphs.cache_path(seed=0, min_fonts=9, **GLYPHS)
    return path, calls


def _damaged(good: dict, how: str) -> dict:
    arrays = {k: v.copy() for k, v in good.items()}
    if how == "label too large":
        arrays["labels"][3] = len(arrays["codepoints"]) + 7
    elif how == "negative label":
        arrays["labels"][0] = -2
    elif how == "images of another size":
        arrays["images"] = arrays["images"][:, :, :10, :10]
    elif how == "missing samples":
        arrays["labels"], arrays["images"] = arrays["labels"][1:], arrays["images"][1:]
    return arrays


def test_glyphs_cache_with_labels_out_of_range_is_regenerated_with_a_warning(glyphs_cache, good_glyphs, tmp_path):
    path, calls = glyphs_cache
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **_damaged(good_glyphs, "label too large"))
    with pytest.warns(RuntimeWarning, match=r"is inconsistent \(labels range from 0 to \d+, outside"):
        result = metareg("run", *TINY, "--output-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    with np.load(path) as repaired:
        assert repaired["labels"].max() < len(repaired["codepoints"])


@pytest.mark.parametrize("how", ["negative label", "images of another size", "missing samples"])
def test_inconsistent_glyphs_cache_is_regenerated(glyphs_cache, good_glyphs, how):
    from metareg_datasets.glyphs import glyphs

    path, calls = glyphs_cache
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **_damaged(good_glyphs, how))
    with pytest.warns(RuntimeWarning, match="is inconsistent"):
        ds = glyphs(**GLYPHS)
    assert len(calls) == 1 and ds.train.num_classes > 0
    glyphs(**GLYPHS)  # the rewritten cache is used as it is
    assert len(calls) == 1


def test_glyphs_cache_path_that_is_a_folder_is_left_alone_with_a_warning(glyphs_cache):
    from metareg_datasets.glyphs import glyphs

    path, calls = glyphs_cache
    path.mkdir(parents=True)
    (path / "mine.txt").write_text("not metareg's")
    with pytest.warns(RuntimeWarning, match="is a folder, not a cache file; generating the dataset without caching"):
        ds = glyphs(**GLYPHS)
    assert len(calls) == 1 and ds.test.num_classes > 0
    assert (path / "mine.txt").read_text() == "not metareg's"


# ----------------------------------------------------------------------------- plugins

BUGGY = Path(__file__).parent / "fixtures" / "buggydist"


@pytest.mark.parametrize("option, name, error", [
    ("--backbone", "buggynet", "RuntimeError: weight table missing"),
    ("--strategy", "buggystrategy", "KeyError: 'lr'"),
    ("--transform", "buggytransform", "AttributeError"),
    ("--dataset", "buggydata", "ZeroDivisionError"),
])
def test_plugin_factory_that_raises_is_named_with_its_distribution(tmp_path, monkeypatch, option, name, error):
    monkeypatch.syspath_prepend(str(BUGGY))  # "installs" metareg-fake-buggy 0.5
    out = tmp_path / "run"
    base = TRAIN if option == "--dataset" else TINY
    if option == "--backbone":
        base = [a for a in base if a not in ("--backbone-opt", "hidden=8")]  # conv4's option
    # the environment form of --load-plugins, which the CLI would leave set for later tests
    monkeypatch.setenv("METAREG_PLUGINS", "core,backbones,strategies,datasets,kornia,buggy")
    result = metareg("run", *base, option, name, "--output-dir", str(out))
    refused(result, f"{option[2:]} {name!r} from plugin buggy (metareg-fake-buggy 0.5) failed while being built",
            error, "report it to its authors")
    assert not out.exists()


# ----------------------------------------------------------------------------- stored settings


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    result = metareg("run", *TINY, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_checkpoint_with_invalid_stored_settings_is_refused_naming_the_file(finished_run, tmp_path):
    ckpt = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    ckpt["metareg"]["config"]["lr"] = float("nan")
    damaged = tmp_path / "damaged.ckpt"
    torch.save(ckpt, damaged)
    line = refused(metareg("eval", str(damaged), "--output-dir", str(tmp_path / "eval")),
                   str(damaged), "lr must be a finite number", "got nan")
    assert "settings stored in" in line
    assert not (tmp_path / "eval").exists()


def test_resume_with_invalid_stored_settings_is_refused_naming_the_file(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    saved = copy / "config.yaml"
    saved.write_text(saved.read_text().replace("seed: 0\n", "seed: -5\n"))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    refused(metareg("run", "--resume", "--output-dir", str(copy), "--max-epochs", "2"),
            f"settings stored in {str(saved)!r}", "seed must be an integer from 0 to 4294967295", "got -5")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_eval_on_a_missing_gpu_is_refused_before_any_work(finished_run, tmp_path, no_gpu):
    out = tmp_path / "eval"
    refused(metareg("eval", str(finished_run / "checkpoints" / "last.ckpt"), "--accelerator", "gpu",
                    "--output-dir", str(out)), "accelerator 'gpu' needs a GPU", "use --accelerator cpu")
    assert not out.exists()


@pytest.mark.parametrize("flag, name", [("--backbone", "resnet19"), ("--strategy", "protonett"),
                                        ("--dataset", "nosuch")])
def test_an_unknown_component_is_one_line_naming_the_closest_and_the_choices(flag, name, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", flag, name, "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: unknown {flag[2:]} {name!r}."), result.output
    assert "Available " in lines[0]
    assert not out.exists()
