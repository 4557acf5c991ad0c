"""`metareg export`: each format loads without metareg's training stack and predicts what the checkpoint predicts."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import metareg
from metareg.cli import cli
from tests.disk_faults import OLD, full_disk, make_special


def _checkpoint(path: Path, strategy: str = "prototypicalnetworks", strategy_options: dict | None = None,
                invert: bool = False) -> Path:
    """An untrained conv4 with randomised batch-norm statistics, saved as the core saves checkpoints."""
    from metareg.build import build_model, resolve_all
    from metareg.checkpoint import payload
    from metareg.config import RunConfig

    torch.manual_seed(1)
    config = RunConfig.from_sources({"backbone": "conv4", "backbone_options": {"hidden": 8}, "strategy": strategy,
                                     "strategy_options": strategy_options or {}, "ways": 3, "shots": 2})
    model, transform, task = build_model(resolve_all(config, dataset=False), config, 1, 16, 6, "tiny")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    state = {"strategy." + k: v for k, v in model.state_dict().items()}
    meta = payload(config, task, "tiny")
    meta["data"]["info"] = {"invert": invert}
    torch.save({"metareg": meta, "state_dict": state}, path)
    return path


def _folders(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    for c, n in enumerate((2, 3, 1)):
        d = root / "support" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "query").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / "query" / f"{i}.png")
    return root / "support", root / "query"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def setup(tmp_path):
    # invert=True: the exported files must carry the inversion the training data recorded
    ckpt = _checkpoint(tmp_path / "m.ckpt", invert=True)
    support, query = _folders(tmp_path)
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    assert clf.invert is True
    from metareg.predict import read_support_folder

    files = [f for fs in read_support_folder(support).values() for f in fs]
    inputs = {  # what a deployment feeds the exported files: file pixels / 255 at the model's size
        "support": clf.load_images(files).float() / 255,
        "labels": torch.tensor([0, 0, 1, 1, 1, 2]),
        "query": clf.load_images(sorted(query.iterdir())).float() / 255,
    }
    return ckpt, support, query, clf, inputs


def _run_without_metareg(script: str, tmp_path: Path) -> dict:
    """Run ``script`` in a fresh interpreter and check it never imported metareg."""
    code = script + "\nimport sys, json\nassert not any(m.split('.')[0].startswith('metareg') for m in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


def test_safetensors_round_trip(setup, tmp_path):
    ckpt, support, query, clf, _ = setup
    out = tmp_path / "model.safetensors"
    result = _invoke("export", "-c", ckpt, "-o", out)  # format from the suffix
    assert result.exit_code == 0, result.output
    assert "safetensors" in result.output

    # plain safetensors reads the weights and the description, no metareg needed
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as fh:
        meta = json.loads(fh.metadata()["metareg"])
        weights = {k: fh.get_tensor(k) for k in fh.keys()}
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    assert meta["metareg"]["config"]["backbone"] == "conv4" and meta["inputs"]["image_size"] == 16
    assert meta["head"]["type"] == "PrototypeHead"

    # and metareg rebuilds the same classifier from it
    again = metareg.FewShotClassifier.from_checkpoint(out).fit(support)
    assert again.invert == clf.invert
    assert torch.equal(again.predict_logits([query]), clf.predict_logits([query]))


def test_torchscript_round_trip_without_metareg(setup, tmp_path):
    ckpt, support, query, clf, inputs = setup
    out = tmp_path / "model.pt"
    result = _invoke("export", "-c", ckpt, "--format", "torchscript", "-o", out)
    assert result.exit_code == 0, result.output
    torch.save(inputs, tmp_path / "inputs.pt")
    got = _run_without_metareg(
        "import json, torch\n"
        "extra = {'metareg.json': ''}\n"
        "m = torch.jit.load('model.pt', _extra_files=extra)\n"
        "x = torch.load('inputs.pt', weights_only=True)\n"
        "with torch.no_grad():\n"
        "    p = m(x['support'], x['labels'], x['query'])\n"
        "    f = m.embed(x['query'])\n"
        "json.dump({'probs': p.tolist(), 'features': f.tolist(), 'meta': json.loads(extra['metareg.json'])},"
        " open('out.json', 'w'))\n",
        tmp_path,
    )
    expected = clf.predict_proba([query])
    assert torch.allclose(torch.tensor(got["probs"]), expected, atol=1e-5)
    assert [int(np.argmax(p)) for p in got["probs"]] == expected.argmax(1).tolist()
    with torch.no_grad():
        features = clf.strategy.backbone(clf.prepare(clf.load_images(sorted(query.iterdir()))))
    assert torch.allclose(torch.tensor(got["features"]), features, atol=1e-5)
    assert got["meta"]["inputs"] == {"channels": 1, "image_size": 16, "color": "L", "resize": "bilinear",
                                     "scale": "pixels / 255", "invert": clf.invert}


def test_onnx_round_trip(setup, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ckpt, support, query, clf, inputs = setup
    out = tmp_path / "model.onnx"
    result = _invoke("export", "-c", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    np.savez(tmp_path / "inputs.npz", support=inputs["support"].numpy(), query=inputs["query"].numpy(),
             onehot=np.eye(3, dtype=np.float32)[inputs["labels"].numpy()])
    got = _run_without_metareg(
        "import json, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession('model.onnx')\n"
        "x = np.load('inputs.npz')\n"
        "p, f = s.run(['probabilities', 'query_features'],"
        " {'support': x['support'], 'support_onehot': x['onehot'], 'query': x['query']})\n"
        "meta = json.loads(s.get_modelmeta().custom_metadata_map['metareg'])\n"
        "json.dump({'probs': p.tolist(), 'features': f.tolist(), 'meta': meta}, open('out.json', 'w'))\n",
        tmp_path,
    )
    expected = clf.predict_proba([query])
    assert torch.allclose(torch.tensor(got["probs"]), expected, atol=1e-4)
    assert [int(np.argmax(p)) for p in got["probs"]] == expected.argmax(1).tolist()
    images = inputs["query"]
    with torch.no_grad():
        features = clf.strategy.backbone(clf.transform.evaluate(1 - images if clf.invert else images))
    assert torch.allclose(torch.tensor(got["features"]), features, atol=1e-4)
    assert got["meta"]["graph"].startswith("support (S, C, H, W), support_onehot")
    assert got["meta"]["head"]["type"] == "PrototypeHead"


def test_cosine_head_exports(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt", strategy_options={"distance": "cosine", "temperature": 0.1})
    support, query = _folders(tmp_path)
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    assert _invoke("export", "-c", ckpt, "-o", tmp_path / "m.pt").exit_code == 0
    with pytest.warns(FutureWarning):  # torch.jit is deprecated upstream; loading still works
        module = torch.jit.load(str(tmp_path / "m.pt"))
    from metareg.predict import read_support_folder

    files = [f for fs in read_support_folder(support).values() for f in fs]
    with torch.no_grad():
        probs = module(clf.load_images(files).float() / 255, torch.tensor([0, 0, 1, 1, 1, 2]),
                       clf.load_images(sorted(query.iterdir())).float() / 255)
    assert torch.allclose(probs, clf.predict_proba([query]), atol=1e-5)


# ---------------------------------------------------------------------------- refusals


class _Adapting(metareg.Strategy):
    """A strategy that needs more than features to predict (no export_head)."""

    def forward(self, episodes):
        return torch.zeros(episodes.query.shape[0], episodes.query.shape[1], episodes.ways)


def test_torchscript_refuses_strategies_without_a_feature_head(tmp_path):
    from metareg.export import export
    from metareg.model_loading import LoadedModel, load_model

    loaded = load_model(_checkpoint(tmp_path / "m.ckpt"))
    strategy = _Adapting()
    strategy.setup(loaded.strategy.backbone, loaded.task)
    model = LoadedModel(strategy, loaded.transform, loaded.config, loaded.task, loaded.meta)
    with pytest.raises(metareg.MetaregError, match="export --format safetensors"):
        export(model, tmp_path / "x.pt", "torchscript", invert=False)
    assert not (tmp_path / "x.pt").exists()
    export(model, tmp_path / "x.safetensors", "safetensors", invert=False)  # always possible
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    export(model, tmp_path / "x.onnx", "onnx", invert=False)  # the embedding network alone
    assert "images (N, C, H, W) -> features" in json.loads(
        {p.key: p.value for p in onnx.load(str(tmp_path / "x.onnx")).metadata_props}["metareg"])["graph"]
    images = torch.rand(4, 1, 16, 16)
    features = ort.InferenceSession(str(tmp_path / "x.onnx")).run(["features"], {"images": images.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(features), loaded.strategy.backbone(images), atol=1e-4)


def test_onnx_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    result = _invoke("export", "-c", _checkpoint(tmp_path / "m.ckpt"), "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert "needs the 'onnx' package" in result.output and "pip install" in result.output


def test_export_bad_input(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    result = _invoke("export", "-c", ckpt, "-o", tmp_path / "m.bin")
    assert result.exit_code == 2 and "cannot tell the export format" in result.output
    result = _invoke("export", "-c", tmp_path / "nope.ckpt", "-o", tmp_path / "m.pt")
    assert result.exit_code == 2 and "does not exist" in result.output
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    result = _invoke("export", "-c", foreign, "-o", tmp_path / "m.pt")
    assert result.exit_code == 2 and "not written by metareg" in result.output
    # a safetensors file that metareg did not write is refused by predict
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(metareg.CheckpointError, match="not a metareg export"):
        metareg.FewShotClassifier.from_checkpoint(tmp_path / "other.safetensors")


# ---------------------------------------------------------------------------- writing the output safely (issue 13)


def test_export_refuses_to_overwrite_its_own_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    before = ckpt.read_bytes()
    os.link(ckpt, tmp_path / "hard.ckpt")
    for output in (ckpt, tmp_path / "." / "m.ckpt", tmp_path / "hard.ckpt"):
        result = _invoke("export", "-c", ckpt, "-o", output, "--format", "safetensors")
        assert result.exit_code == 2, result.output
        assert "it is the input" in result.output and "choose another output path" in result.output
    assert ckpt.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.ckpt", "m.ckpt"]


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["symlink", "device"])  # click's dir_okay=False refuses a directory
def test_export_never_replaces_what_is_not_a_regular_file(tmp_path, kind, fmt):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    target = make_special(kind, tmp_path / "out" / f"model.{fmt}")
    if target is None:
        pytest.skip(f"cannot create a {kind} here")
    before = os.lstat(target)
    result = _invoke("export", "-c", ckpt, "-o", target, "--format", fmt)
    assert result.exit_code == 2, result.output
    described = {"symlink": "a symbolic link (to 'real.bin'; pass that path to replace the file it points to)",
                 "device": "a character device"}[kind]
    assert f"it is {described}, and metareg only replaces regular files" in result.output
    assert str(target) in result.output
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    if kind == "symlink":
        assert (target.parent / "real.bin").read_bytes() == OLD


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_export_to_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, fmt):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"model.{fmt}"
    target.write_bytes(OLD)
    with full_disk(out):
        result = _invoke("export", "-c", ckpt, "-o", target, "--format", fmt)
    assert result.exit_code == 2, result.output
    assert f"cannot write {str(target)!r}: No space left on device (the previous file is unchanged)" in result.output
    assert "cannot be exported" not in result.output
    assert target.read_bytes() == OLD and [p.name for p in out.iterdir()] == [target.name]
    result = _invoke("export", "-c", ckpt, "-o", target, "--format", fmt)  # with room, the same command works
    assert result.exit_code == 0, result.output
    assert target.read_bytes() != OLD and [p.name for p in out.iterdir()] == [target.name]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_refuses_non_finite_weights_by_name(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    name = sorted(k for k, v in saved["state_dict"].items() if v.is_floating_point())[3]
    saved["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(saved, tmp_path / "nan.ckpt")
    result = _invoke("export", "-c", tmp_path / "nan.ckpt", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2, result.output
    assert f"{str(tmp_path / 'nan.ckpt')!r} holds non-finite weights: {name!r} has 1 NaN or infinite value" \
        in result.output
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_export_to_a_folder_it_may_not_write_says_so(tmp_path, monkeypatch, err):
    import tempfile

    def refused(*args, **kwargs):  # what creating a file in a read-only or foreign folder gets
        raise OSError(err, os.strerror(err))

    ckpt = _checkpoint(tmp_path / "m.ckpt")
    monkeypatch.setattr(tempfile, "mkstemp", refused)
    result = _invoke("export", "-c", ckpt, "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2, result.output
    assert f"cannot write {str(tmp_path / 'm.safetensors')!r}: {os.strerror(err)} (nothing was written)" \
        in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]


def test_predict_refuses_an_export_with_non_finite_weights_by_name(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = _checkpoint(tmp_path / "m.ckpt")
    support, query = _folders(tmp_path)
    assert _invoke("export", "-c", ckpt, "-o", tmp_path / "m.safetensors").exit_code == 0
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name].view(-1)[0] = float("-inf")
    save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=meta)
    result = _invoke("predict", "-c", tmp_path / "inf.safetensors", "-s", support, "-q", query)
    assert result.exit_code == 2, result.output
    assert f"{str(tmp_path / 'inf.safetensors')!r} holds non-finite weights: {name!r}" in result.output
