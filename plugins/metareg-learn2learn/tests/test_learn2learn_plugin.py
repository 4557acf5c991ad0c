"""The metareg-learn2learn plugin against the real installed learn2learn, on tiny files
written in learn2learn's own formats; and metareg without learn2learn."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import metareg

HAVE_L2L = importlib.util.find_spec("learn2learn") is not None and importlib.util.find_spec("gym") is not None
needs_l2l = pytest.mark.skipif(
    not HAVE_L2L, reason="learn2learn is not installed (python -m metareg_learn2learn.install installs it)"
)
HIDE_L2L = "import sys; sys.modules['learn2learn'] = None; from metareg.cli import main; main({argv!r})"


def _metareg_without_l2l(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HIDE_L2L.format(argv=list(argv))],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


# ------------------------------------------------------------------------ without learn2learn


def test_without_learn2learn_list_works_and_says_how_to_install():
    result = _metareg_without_l2l("list")
    assert result.returncode == 0, result.stderr
    assert "conv4" in result.stdout and "prototypicalnetworks" in result.stdout  # the rest keeps working
    broken = result.stdout.split("broken plugins", 1)[1]
    assert "learn2learn (metareg-learn2learn 0.1.0): failed at import" in broken
    assert "learn2learn is not installed" in broken and "python -m metareg_learn2learn.install" in broken
    assert "l2l-cnn4" not in result.stdout


def test_without_learn2learn_json_and_strict_mode():
    doc = json.loads(_metareg_without_l2l("list", "--json").stdout)
    (entry,) = [b for b in doc["broken"] if b["name"] == "learn2learn"]
    assert entry["distribution"] == "metareg-learn2learn" and "metareg_learn2learn.install" in entry["error"]
    strict = _metareg_without_l2l("--strict", "list")
    assert strict.returncode != 0
    assert "metareg-learn2learn" in strict.stderr and "learn2learn is not installed" in strict.stderr
    disabled = _metareg_without_l2l("--disable-plugins", "learn2learn", "--strict", "list")
    assert disabled.returncode == 0 and "broken plugins" not in disabled.stdout


def test_import_metareg_does_not_need_learn2learn():
    code = "import sys; sys.modules['learn2learn'] = None; import metareg; print(metareg.restricted_load.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "restricted_load", result.stderr


@needs_l2l
def test_listing_does_not_import_learn2learn_or_torch():
    code = (
        "import sys; from metareg.cli import main\n"
        "try:\n    main(['list', 'l2l-*'])\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', sorted(m for m in ('learn2learn', 'torch', 'gym') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "l2l-miniimagenet" in result.stdout and "l2l-metasgd" in result.stdout
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]


# ------------------------------------------------------------------------ datasets on synthetic files


@pytest.fixture(scope="module")
def synthetic():
    if not HAVE_L2L:
        pytest.skip("learn2learn is not installed")
    from metareg_learn2learn import synthetic

    return synthetic


def _value(c: int) -> int:
    return (37 * c + 11) % 256


@needs_l2l
def test_mini_imagenet_pickles(tmp_path, synthetic):
    from metareg.testing import check_dataset

    root = synthetic.write_mini_imagenet(tmp_path)
    counts = {"train": 5, "validation": 3, "test": 3}
    ds = check_dataset("l2l-miniimagenet", options={"root": str(root)}, classes=counts)
    assert (ds.channels, ds.image_size) == (3, 84)
    assert ds.test.classes == ["n00000008", "n00000009", "n00000010"]
    # Labels and pixels agree: every image of test class k has the colour of global class 8 + k.
    images = ds.test.images.gather(torch.arange(len(ds.test)))
    expected = torch.tensor([_value(8 + int(k)) for k in ds.test.labels], dtype=torch.uint8)
    assert torch.equal(images[:, 0, 5, 5], expected)


@needs_l2l
def test_fc100_tiered_and_cifarfs(tmp_path, synthetic):
    from metareg.testing import check_dataset

    counts = {"train": 5, "validation": 3, "test": 3}
    fc = check_dataset("l2l-fc100", options={"root": str(synthetic.write_fc100(tmp_path / "fc"))}, classes=counts)
    tiered = check_dataset(
        "l2l-tieredimagenet",
        options={"root": str(synthetic.write_tiered_imagenet(tmp_path / "tiered")), "image_size": 42},
        classes=counts,
    )
    cifar = check_dataset(
        "cifar-fs", options={"root": str(synthetic.write_cifarfs(tmp_path / "cifar"))}, classes=counts
    )
    assert (fc.image_size, tiered.image_size, cifar.image_size) == (32, 42, 32)
    assert cifar.validation.classes == ["class005", "class006", "class007"]
    for ds, first_test_class in ((fc, 8), (tiered, 8), (cifar, 8)):
        image = ds.test.images.gather(torch.tensor([len(ds.test) - 1]))[0]
        c = first_test_class + int(ds.test.labels[-1])
        assert image[:, 10, 10].tolist() == [_value(c), (_value(c) + 85) % 256, (_value(c) + 170) % 256]


@needs_l2l
def test_full_omniglot(tmp_path, synthetic, monkeypatch):
    import torchvision

    from metareg.testing import check_dataset

    # torchvision checks the official zips' MD5 before reading the extracted folders; synthetic files can't match.
    monkeypatch.setattr(torchvision.datasets.Omniglot, "_check_integrity", lambda self: True)
    root = synthetic.write_omniglot(tmp_path, alphabets=2, characters=8, per_class=3)
    ds = check_dataset("l2l-omniglot", options={"root": str(root), "image_size": 28}, min_samples_per_class=3)
    total = sum(ds.split(s).num_classes for s in ("train", "validation", "test"))
    assert total == 32 and (ds.channels, ds.image_size) == (1, 28)
    assert ds.train.classes[0].count("/") == 1  # "<Alphabet>/characterNN"
    from metareg_learn2learn.datasets import omniglot

    # Same seed, same class split; another seed, another split.
    assert omniglot(root=str(root), seed=0).test.classes == ds.test.classes
    assert omniglot(root=str(root), seed=1).test.classes != ds.test.classes


@needs_l2l
def test_quickdraw_bookkeeping_round_trip_and_dtd(tmp_path, synthetic):
    from metareg.testing import check_dataset

    root = synthetic.write_quickdraw(tmp_path / "qd", per_class=2)
    first = check_dataset("l2l-quickdraw", options={"root": str(root)}, classes={"train": 241, "validation": 52,
                                                                                  "test": 52})
    assert sorted(p.name for p in root.glob("quickdraw-*-bookkeeping.pkl")) == [
        "quickdraw-test-bookkeeping.pkl", "quickdraw-train-bookkeeping.pkl", "quickdraw-validation-bookkeeping.pkl"
    ]
    # The second build reads learn2learn's bookkeeping pickles back, through the restricted loader.
    second = check_dataset("l2l-quickdraw", options={"root": str(root)})
    assert torch.equal(first.test.labels, second.test.labels) and (second.channels, second.image_size) == (1, 28)
    image = second.train.images.gather(torch.tensor([3]))[0]  # class 1, sample 1
    assert image[0, 0, 0] == 1 and image[0, 5, 5] == _value(1)

    dtd = check_dataset("l2l-dtd", options={"root": str(synthetic.write_dtd(tmp_path / "dtd")), "image_size": 24},
                        classes={"train": 33, "validation": 7, "test": 7})
    assert dtd.image_size == 24


@needs_l2l
def test_missing_files_give_a_clear_error(tmp_path):
    from metareg_learn2learn.datasets import fc100, mini_imagenet

    with pytest.raises(metareg.DataError, match=r"mini-imagenet-cache-train.pkl not found.*download=true"):
        mini_imagenet(root=str(tmp_path))
    with pytest.raises(metareg.DataError, match=r"FC100 could not read the train dataset.*download=true"):
        fc100(root=str(tmp_path))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_l2l
@pytest.mark.parametrize("dataset", ["mini", "fc100", "tiered"])
def test_every_unpickle_is_restricted(tmp_path, synthetic, dataset):
    from metareg_learn2learn.datasets import fc100, mini_imagenet, tiered_imagenet

    marker = tmp_path / "pwned"
    if dataset == "mini":
        root = synthetic.write_mini_imagenet(tmp_path / "d")
        path, build = root / "mini-imagenet-cache-train.pkl", lambda: mini_imagenet(root=str(root))
    elif dataset == "fc100":
        root = synthetic.write_fc100(tmp_path / "d")
        path, build = root / "FC100_train.pickle", lambda: fc100(root=str(root))
    else:
        root = synthetic.write_tiered_imagenet(tmp_path / "d")
        path, build = root / "tiered-imagenet" / "train_labels.pkl", lambda: tiered_imagenet(root=str(root))
    path.write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(metareg.DataError, match=r"refusing to unpickle the global (posix|os)\.system"):
        build()
    assert not marker.exists()


# ------------------------------------------------------------------------ models and strategies


@needs_l2l
def test_backbones():
    from metareg.testing import check_backbone

    # Flattened features: 28 px pools down to 1x1 (8 features), 32 px to 2x2 (32 features).
    assert check_backbone("l2l-cnn4", shapes=[(1, 28, 28), (3, 32, 32)], options={"hidden_size": 8}) == {
        (1, 28, 28): 8,
        (3, 32, 32): 32,
    }
    assert check_backbone("l2l-resnet12", shapes=[(1, 32, 32)], options={"dropblock_dropout": 0.0}) == {
        (1, 32, 32): 640
    }


@needs_l2l
def test_backbone_size_limits_are_explained():
    from metareg_learn2learn.models import resnet12, wrn28

    with pytest.raises(metareg.OptionError, match="needs images of at least 84 pixels, got 32"):
        wrn28(image_size=32)
    with pytest.raises(metareg.OptionError, match="dropblock_dropout=0"):
        resnet12(image_size=32)


@needs_l2l
@pytest.mark.parametrize("name", ["l2l-metasgd", "l2l-metacurvature"])
def test_strategies_meet_the_contract_and_learn(name):
    from metareg.testing import check_strategy, make_episodes, tiny_backbone

    check_strategy(name)
    check_strategy(name, options={"adaptation_steps": 2, "first_order": True}, ways=5, shots=1, queries=1)

    from metareg.registry import Registry

    torch.manual_seed(0)
    strategy = Registry.current().get("strategies", name).record.load()()
    backbone = tiny_backbone(1)
    task = metareg.TaskInfo(3, 2, 2, 3, 2, 2, 6, 1, 8, backbone.out_features)
    strategy.setup(backbone, task)
    learned = [p for n, p in strategy.named_parameters() if n.startswith("learner.") and ".module." not in n]
    assert learned, "the learned step sizes / curvature must be parameters of the strategy"
    optimizer = torch.optim.Adam(strategy.parameters(), lr=0.01)
    losses = []
    for step in range(30):
        out = strategy.loss(make_episodes(ways=3, shots=2, queries=2, seed=step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.8, losses


@needs_l2l
def test_strategy_refuses_more_ways_than_its_head():
    from metareg_learn2learn.strategies import MetaSGD

    from metareg.testing import make_episodes, tiny_backbone

    strategy = MetaSGD()
    backbone = tiny_backbone(1)
    strategy.setup(backbone, metareg.TaskInfo(3, 1, 1, 3, 1, 1, 6, 1, 8, backbone.out_features))
    with pytest.raises(metareg.ConfigError, match="5 ways but the head was built for 3"):
        strategy(make_episodes(ways=5, shots=1, queries=1))


# ------------------------------------------------------------------------ end to end


def _run_available() -> bool:
    return importlib.util.find_spec("metareg.cli.train") is not None


@needs_l2l
@pytest.mark.slow
@pytest.mark.skipif(not _run_available(), reason="metareg run is not available yet")
def test_metareg_run_trains_on_a_learn2learn_dataset(tmp_path, synthetic):
    root = synthetic.write_cifarfs(tmp_path / "data", classes=(4, 2, 2), per_class=3, size=16)
    exe = Path(sys.executable).with_name("metareg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "metareg"]
    out = tmp_path / "run"
    result = subprocess.run(
        [
            *cmd, "run", "--dataset", "l2l-cifarfs", "--dataset-opt", f"root={root}", "--dataset-opt", "image_size=16",
            "--backbone", "l2l-cnn4", "--backbone-opt", "hidden_size=8", "--strategy", "l2l-metasgd",
            "--ways", "2", "--shots", "1", "--queries", "1", "--test-queries", "1", "--meta-batch-size", "2",
            "--epoch-length", "2",
            "--max-steps", "2", "--max-epochs", "-1", "--test-num-tasks", "4", "--val-num-tasks", "2",
            "--output-dir", str(out), "--no-progress", "--accelerator", "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "l2l-cifarfs" and summary["strategy"] == "l2l-metasgd"
    assert summary["episodes"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["versions"]["plugins"]["metareg-learn2learn"] == "0.1.0"
    assert "2-way 1-shot" in result.stdout
