"""The registry is the test matrix: every registered component of every installed plugin
goes through the same metareg.testing contract checks that plugin authors use, on CPU.

Big models get small option overrides (CONTRACT_OPTIONS) so the suite stays fast;
datasets that read files get small synthetic files in their format (DATASET_DATA);
any other dataset that cannot find its files (metareg.DataError) is skipped with the
reason. Also here: first-party plugins import only metareg's public API.
"""
from __future__ import annotations

import ast
import inspect
import io
import pickle
import zipfile
from pathlib import Path

import pytest

import metareg
from metareg.kinds import PLURALS as KINDS
from metareg.options import describe
from metareg.plugins import load_plugins
from metareg.registry import Registry
from metareg.testing import check_backbone, check_dataset, check_strategy, check_transform

ROOT = Path(__file__).resolve().parents[1]

# Per-component keyword arguments for the checks: smaller variants of big models.
CONTRACT_OPTIONS: dict[tuple[str, str], dict] = {
    ("backbones", "resnet12"): {"options": {"widths": (8, 8, 16, 16)}},
    ("backbones", "resnet18"): {"options": {"width": 8}},
    ("backbones", "wrn28"): {"options": {"depth": 10, "widen_factor": 1}},
    ("backbones", "l2l-resnet12"): {"options": {"wider": False, "dropblock_dropout": 0.0}},
    ("backbones", "l2l-wrn28"): {"shapes": [(3, 84, 84)], "batch": 1},  # learn2learn's WRN-28 needs 84 px
}


def _components(kind: str):
    try:
        return Registry(load_plugins(strict=False)).components(kind)
    except Exception as exc:  # noqa: BLE001 - a collection error would hide every other test
        pytest.fail(f"loading plugins failed: {exc}")


def _params(kind: str):
    return [pytest.param(p.record.name, p.qualified_name, id=p.qualified_name) for p in _components(kind)]


def _kwargs(kind: str, name: str, **defaults) -> dict:
    return defaults | CONTRACT_OPTIONS.get((kind, name), {})


@pytest.mark.parametrize("name, qualified", _params("backbones"))
def test_backbone_contract(name, qualified):
    check_backbone(qualified, **_kwargs("backbones", name, shapes=[(1, 28, 28), (3, 32, 32)]))


@pytest.mark.parametrize("name, qualified", _params("transforms"))
def test_transform_contract(name, qualified):
    kwargs = _kwargs("transforms", name)
    check_transform(qualified, channels=3, image_size=32, **kwargs)
    check_transform(qualified, channels=1, image_size=28, **kwargs)


@pytest.mark.parametrize("name, qualified", _params("strategies"))
def test_strategy_contract(name, qualified):
    check_strategy(qualified, **_kwargs("strategies", name))


# ------------------------------------------------------------------------ datasets with files


def _png(value: int, size: int, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), color=value if mode == "L" else (value, 255 - value, value // 2)).save(buf, "PNG")
    return buf.getvalue()


def _imagefolder(tmp_path: Path, request) -> dict:
    for c in range(10):
        folder = tmp_path / "folder" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"{i}.png").write_bytes(_png(20 * c + i, 16, "RGB"))
    return {"root": str(tmp_path / "folder")}


def _shards(tmp_path: Path, request) -> dict:
    """A shard folder as `metareg shard` writes it, from a small in-memory dataset."""
    import numpy as np

    from metareg.shard_writer import write_shards

    images = np.random.default_rng(0).integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    data = metareg.FewShotDataset.from_arrays(images, np.arange(10).repeat(3), ratios=(0.6, 0.2, 0.2))
    write_shards(data, tmp_path / "shards", source="arrays", options={})
    return {"root": str(tmp_path / "shards")}


def write_mini_imagenet_pickles(root: Path, classes=(4, 2, 2), per_class: int = 3, size: int = 84) -> None:
    """learn2learn's mini-imagenet-cache-<split>.pkl: {'image_data': (N, 84, 84, 3) uint8, 'class_dict': ...}."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start = 0
    for split, count in zip(("train", "validation", "test"), classes, strict=True):
        names = [f"n{start + c:08d}" for c in range(count)]
        start += count
        data = rng.integers(0, 255, (count * per_class, size, size, 3), dtype=np.uint8)
        class_dict = {n: list(range(i * per_class, (i + 1) * per_class)) for i, n in enumerate(names)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as fh:
            pickle.dump({"image_data": data, "class_dict": class_dict}, fh, protocol=4)


def _miniimagenet(tmp_path: Path, request) -> dict:
    write_mini_imagenet_pickles(tmp_path / "mini")
    return {"root": str(tmp_path / "mini")}


def _omniglot(tmp_path: Path, request) -> dict:
    # A tiny zip in the official layout: images_background/<Alphabet>/characterNN/*.png
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for a in range(3):
            for c in range(10):
                for i in range(3):
                    zf.writestr(
                        f"images_background/Alpha{a}/character{c + 1:02d}/{a}{c:02d}_{i + 1:02d}.png",
                        _png(255 if (a + c + i) % 2 else 0, 105),
                    )
    return {"root": str(path)}


def _l2l(writer: str, **options):
    """Synthetic files in learn2learn's formats, from the plugin's own writers."""

    def build(tmp_path: Path, request) -> dict:
        synthetic = pytest.importorskip("metareg_learn2learn.synthetic")
        if writer == "write_omniglot":  # torchvision verifies the official zips' MD5 first
            import torchvision

            request.getfixturevalue("monkeypatch").setattr(
                torchvision.datasets.Omniglot, "_check_integrity", lambda self: True
            )
        return {"root": str(getattr(synthetic, writer)(tmp_path / "l2l")), **options}

    return build


def _first_party(writer: str, *args, **options):
    """Tiny files in the published formats, from metareg_datasets.testfiles (MetaOptNet's pickles for CIFAR)."""

    def build(tmp_path: Path, request) -> dict:
        from metareg_datasets import testfiles

        return {"root": str(getattr(testfiles, writer)(tmp_path / "data", *args)), **options}

    return build


# Builders of small data for datasets that read files: (tmp_path, request) -> options.
DATASET_DATA = {
    "cifarfs": _first_party("write_metaoptnet_pickles", "cifarfs"),
    "fc100": _first_party("write_metaoptnet_pickles", "fc100"),
    "tieredimagenet": _first_party("write_tiered", "png", image_size=16),
    "imagefolder": _imagefolder,
    "shards": _shards,
    "miniimagenet": _miniimagenet,
    "omniglot": _omniglot,
    "l2l-miniimagenet": _l2l("write_mini_imagenet"),
    "l2l-tieredimagenet": _l2l("write_tiered_imagenet"),
    "l2l-cifarfs": _l2l("write_cifarfs"),
    "l2l-fc100": _l2l("write_fc100"),
    "l2l-omniglot": _l2l("write_omniglot"),
    "l2l-quickdraw": _l2l("write_quickdraw"),
    "l2l-dtd": _l2l("write_dtd"),
}


@pytest.mark.parametrize("name, qualified", _params("datasets"))
def test_dataset_contract(name, qualified, tmp_path, request):
    kwargs = _kwargs("datasets", name)
    if name in DATASET_DATA:
        kwargs["options"] = {**kwargs.get("options", {}), **DATASET_DATA[name](tmp_path, request)}
    try:
        check_dataset(qualified, **kwargs)
    except metareg.DataError as exc:
        if name in DATASET_DATA:
            raise
        pytest.skip(f"{qualified}: no data available here and no synthetic data in tests/test_contracts.py: {exc}")


# ------------------------------------------------------------------------ records and options


@pytest.mark.parametrize("kind", KINDS)
def test_records_are_complete_and_options_documented(kind):
    problems = []
    for p in _components(kind):
        where = f"{p.qualified_name} ({p.plugin.distribution})"
        if not p.record.summary.strip():
            problems.append(f"{where}: empty summary")
        try:
            factory = p.record.load()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{where}: factory {p.record.factory_ref} cannot be imported: {exc}")
            continue
        for option in describe(factory, kind=kind):
            if not option.help:
                problems.append(f"{where}: option {option.name!r} has no `{option.name}: help` line in the docstring")
            if option.type is inspect.Parameter.empty:
                problems.append(f"{where}: option {option.name!r} has no type annotation")
    assert not problems, "\n".join(problems)


def test_contract_options_name_registered_components():
    """A stale CONTRACT_OPTIONS key would silently test a big model at full size."""
    names = {(k, p.record.name) for k in KINDS for p in _components(k)}
    stale = [key for key in CONTRACT_OPTIONS if key not in names and not key[1].startswith("l2l-")]
    assert not stale, f"CONTRACT_OPTIONS names components nobody registers: {stale}"


# ------------------------------------------------------------------------ public API only


def _plugin_modules() -> list[Path]:
    files = []
    for pkg in sorted((ROOT / "plugins").glob("*/metareg_*")):
        if pkg.is_dir() and not pkg.name.endswith(".egg-info"):
            files.extend(sorted(pkg.rglob("*.py")))
    return files


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    public = set(metareg.__all__)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("metareg."):
                    bad.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("metareg."):
                bad.append((node.lineno, f"from {node.module} import ..."))
            elif node.module == "metareg":
                for alias in node.names:
                    if alias.name not in public:
                        bad.append((node.lineno, f"from metareg import {alias.name}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "metareg":
            if node.attr not in public:
                bad.append((node.lineno, f"metareg.{node.attr}"))
    return bad


def test_there_are_plugin_modules_to_check():
    names = {p.parent.name for p in _plugin_modules()}
    assert {"metareg_backbones", "metareg_datasets", "metareg_kornia", "metareg_strategies"} <= names


@pytest.mark.parametrize("path", _plugin_modules(), ids=lambda p: str(p.relative_to(ROOT / "plugins")))
def test_first_party_plugins_use_only_the_public_api(path):
    bad = _private_uses(ast.parse(path.read_text(), str(path)))
    assert not bad, f"{path.relative_to(ROOT)} uses metareg internals (only metareg.__all__ is public):\n" + "\n".join(
        f"  line {line}: {what}" for line, what in bad
    )


def test_public_api_checker_catches_internals():
    code = (
        "import metareg\nimport metareg.splits\nfrom metareg.options import bind\n"
        "from metareg import Strategy, plugins\n"
        "x = metareg.episodes.EpisodeSampler\ny = metareg.FewShotDataset\n"
    )
    found = [what for _, what in _private_uses(ast.parse(code))]
    assert found == [
        "import metareg.splits",
        "from metareg.options import ...",
        "from metareg import plugins",
        "metareg.episodes",
    ]
