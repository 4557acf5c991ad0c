"""`metareg export --backbone NAME --backbone-opt pretrained=PATH --support DIR -o model.fewshot` (issue 18 s1):
a prototype classifier from a backbone's embeddings alone, no meta-training."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import metareg
from metareg.cli import cli

CONV4 = {"hidden": 4, "layers": 2}
SIZE = 16


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _images(root, classes=3, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):  # non-square and larger than the model's input: crop and resize are exercised
            Image.fromarray((rng.random((24, 20, 3)) * 255).astype("uint8")).save(d / f"{i}.png")
    return root


def _conv4(seed):
    from metareg_backbones.conv import conv4

    torch.manual_seed(seed)
    net = conv4(channels=3, image_size=SIZE, **CONV4)
    with torch.no_grad():  # BatchNorm statistics that differ from a fresh net's, so they must come from the file
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture
def pretrained(tmp_path):
    from safetensors.torch import save_file

    net = _conv4(seed=7)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.fspath(path))
    return net, path


def _mean_embeddings(net, support, prepare=lambda x: x):
    """The prototypes computed directly: each class's images read as a deployment reads them, embedded, averaged."""
    rows = []
    for d in sorted(p for p in support.iterdir() if p.is_dir()):
        batch = torch.stack([metareg.read_image(f, 3, SIZE) for f in sorted(d.iterdir())]).float() / 255
        with torch.no_grad():
            rows.append(net(prepare(batch)).mean(0))
    return torch.stack(rows)


def _export(pretrained_path, support, out, *extra):
    return _invoke("export", "--backbone", "conv4", *(f"--backbone-opt={k}={v}" for k, v in CONV4.items()),
                   "--backbone-opt", f"pretrained={pretrained_path}", "--image-size", SIZE, "--support", support,
                   "-o", out, *extra)


def test_backbone_export_stores_the_mean_embeddings_of_every_class(tmp_path, pretrained):
    net, weights = pretrained
    support = _images(tmp_path / "support")
    out = tmp_path / "model.fewshot"
    result = _export(weights, support, out)
    assert result.exit_code == 0, result.output
    assert "without meta-training" in result.output and "open set: no threshold stored" in result.output

    from safetensors import safe_open

    with safe_open(os.fspath(out), framework="pt") as fh:
        meta = json.loads(fh.metadata()["metareg-fewshot"])
        prototypes = fh.get_tensor("support.state.prototypes")
    expected = _mean_embeddings(net, support)
    assert prototypes.shape == (3, expected.shape[1])
    torch.testing.assert_close(prototypes, expected, rtol=1e-5, atol=1e-5)
    # The check can fail: the same backbone without the pretrained weights gives other prototypes.
    assert not torch.allclose(_mean_embeddings(_conv4(seed=8), support), prototypes, atol=1e-3)

    assert meta["classes"] == ["class0", "class1", "class2"]  # every class: nothing held out for validation/test
    assert meta["open_set"] is None
    prov = meta["provenance"]
    assert prov["note"] == "no meta-training: backbone conv4 with its options" and prov["test_accuracy"] is None
    assert prov["backbone_options"]["pretrained"] == str(weights) and prov["strategy"] == "prototypicalnetworks"
    # The file carries the weights: its config does not send a loader back to the weights file.
    assert "pretrained" not in meta["checkpoint"]["config"]["backbone_options"]
    assert meta["checkpoint"]["config"]["dataset"] == "imagefolder" == prov["dataset"]
    assert meta["checkpoint"]["config"]["dataset_options"]["ratios"] == [1, 0, 0]
    assert meta["preprocessing"]["image_size"] == SIZE and meta["preprocessing"]["invert"] is False

    weights.unlink()
    clf = metareg.FewShotClassifier.load(out)
    queries = _images(tmp_path / "queries", per_class=1, seed=3)
    logits = clf.predict_logits([queries])
    direct = -torch.cdist(_mean_embeddings(net, queries), expected).pow(2)
    assert logits.argmax(-1).tolist() == direct.argmax(-1).tolist()
    assert not clf.unknown(logits).any()

    result = _invoke("predict", "-m", out, "-q", queries, "-o", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    answers = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [a["predicted"] for a in answers] == [clf.classes[i] for i in direct.argmax(-1).tolist()]

    result = _invoke("enroll", out, "--class", "extra", queries / "class0")
    assert result.exit_code == 0, result.output
    grown = metareg.FewShotClassifier.load(out)
    assert grown.classes[-1] == "extra"
    torch.testing.assert_close(grown.state["prototypes"][-1], _mean_embeddings(net, queries)[0], rtol=1e-5, atol=1e-5)


def test_backbone_export_runs_the_transforms_evaluation_step_before_the_backbone(tmp_path, pretrained):
    pytest.importorskip("kornia")
    net, weights = pretrained
    support = _images(tmp_path / "support", per_class=2)
    out = tmp_path / "model.fewshot"
    result = _export(weights, support, out, "--transform", "lee2019", "--transform-opt", "mean=0.5",
                     "--transform-opt", "std=0.25")
    assert result.exit_code == 0, result.output
    clf = metareg.FewShotClassifier.load(out)
    assert clf.model.config.transform == "lee2019"
    expected = _mean_embeddings(net, support, lambda x: (x - 0.5) / 0.25)
    torch.testing.assert_close(clf.state["prototypes"], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_mean_embeddings(net, support), expected, atol=1e-3)  # the step changes them


@pytest.mark.parametrize("args, message", [
    (["-c", "run.ckpt", "--backbone", "conv4"], "either --checkpoint"),
    ([], "either --checkpoint"),
    (["--backbone", "conv4", "--max-false-accept", "0.1"], "--max-false-accept needs validation classes"),
    (["--backbone", "conv4", "--format", "onnx"], "--backbone writes a .fewshot file"),
    (["--backbone", "no-such-backbone"], "no-such-backbone"),
    (["--backbone", "conv4", "--backbone-opt", "hiden=4"], "hiden"),
    (["--backbone", "conv4", "--channels", "2"], "--channels"),
    (["-c", "run.ckpt", "--image-size", "16"], "apply with --backbone"),
    (["-c", "run.ckpt", "--transform", "lee2019"], "apply with --backbone"),
    (["--backbone", "conv4", "--transform", "no-such-transform"], "no-such-transform"),
])
def test_backbone_export_refuses_bad_input_in_one_line_before_writing(tmp_path, args, message):
    support = _images(tmp_path / "support", per_class=1)
    (tmp_path / "run.ckpt").write_bytes(b"not read")
    out = tmp_path / "model.fewshot"
    result = CliRunner().invoke(cli, ["export", *[a.replace("run.ckpt", str(tmp_path / "run.ckpt")) for a in args],
                                      "--support", str(support), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not out.exists()
