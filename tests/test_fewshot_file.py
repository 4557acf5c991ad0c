"""The .fewshot file (issue 18): `metareg export --support` writes one deployable file; `metareg predict -m`,
`metareg enroll` and metareg.FewShotClassifier.load use it without Lightning; open-set "unknown" answers
calibrated on validation classes; classes enrolled and removed without retraining."""
from __future__ import annotations

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

# glyphs at 14 px, 6 renderings per class: in the test cache after the first generation (tests/test_bad_input.py).
GLYPHS = {"image_size": 14, "samples_per_class": 6}
NO_LIGHTNING = "import sys\nsys.modules['lightning'] = None\nsys.modules['pytorch_lightning'] = None\n"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _checkpoint(path: Path, strategy: str = "prototypicalnetworks", options: dict | None = None) -> Path:
    """An untrained conv4 on glyphs, saved as the core saves checkpoints (calibration rebuilds glyphs)."""
    from metareg.build import build_model, resolve_all
    from metareg.checkpoint import payload
    from metareg.config import RunConfig

    torch.manual_seed(1)
    config = RunConfig.from_sources({"dataset": "glyphs", "dataset_options": GLYPHS, "backbone": "conv4",
                                     "backbone_options": {"hidden": 8}, "strategy": strategy,
                                     "strategy_options": options or {}, "ways": 3, "shots": 2})
    model, transform, task = build_model(resolve_all(config, dataset=False), config, 1, 14, 6, "glyphs")
    meta = payload(config, task, "glyphs")
    meta["data"]["info"] = {"invert": True, "resample": "box"}
    torch.save({"metareg": meta, "state_dict": {"strategy." + k: v for k, v in model.state_dict().items()}}, path)
    return path


def _glyph_folders(root: Path, classes: range, per_class: int = 3, first: int = 0) -> Path:
    """Files of glyphs test classes as a user has them: dark ink on white (the dataset stores the inverse)."""
    from metareg_datasets.glyphs import glyphs

    test = glyphs(**GLYPHS).test
    for c in classes:
        d = root / f"char{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(torch.nonzero(test.labels == c).flatten()[first:first + per_class].tolist()):
            Image.fromarray(255 - test.images.gather(torch.tensor([index]))[0, 0].numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture
def deployed(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    support = _glyph_folders(tmp_path / "support", range(4))
    queries = _glyph_folders(tmp_path / "queries", range(4), per_class=2, first=3)
    return ckpt, support, queries


def _export(ckpt, support, out, *extra):
    result = _invoke("export", "-c", ckpt, "--support", support, "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return result


# ---------------------------------------------------------------------------- one file


def test_export_writes_one_file_that_predicts_as_the_checkpoint(deployed, tmp_path):
    ckpt, support, queries = deployed
    out = tmp_path / "model.fewshot"
    result = _export(ckpt, support, out)
    assert "open set: threshold" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.ckpt", "model.fewshot"]
    # ordinary permissions (the umask's), not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask

    from safetensors import safe_open

    with safe_open(os.fspath(out), framework="pt") as fh:  # plain safetensors: tensors and a JSON header
        meta = json.loads(fh.metadata()["metareg-fewshot"])
        assert fh.get_tensor("support.state.prototypes").shape == (4, 8)
    assert meta["classes"] == [f"char{c:02d}" for c in range(4)] and meta["counts"] == [3, 3, 3, 3]
    prep = meta["preprocessing"]
    assert (prep["crop"], prep["resample"], prep["invert"], prep["image_size"], prep["color"]) == (
        "center", "box", True, 14, "L")
    assert prep["normalisation"]["transform"] == "none"
    assert meta["provenance"]["dataset"] == "glyphs" and meta["provenance"]["metareg_version"] == metareg.__version__
    assert meta["open_set"]["calibrated_on"]["split"] == "validation"

    reference = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support).predict([queries])
    loaded = metareg.FewShotClassifier.load(out)
    answers = loaded.predict([queries])
    assert [p.label for p in answers] == [p.label for p in reference]
    for a, b in zip(answers, reference, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)

    # the file's preprocessing is what a loaded classifier follows, e.g. an export-time --no-invert
    _export(ckpt, support, tmp_path / "plain.fewshot", "--no-invert", "--no-open-set")
    assert metareg.FewShotClassifier.load(tmp_path / "plain.fewshot").invert is False

    csv_out = tmp_path / "p.csv"
    result = _invoke("predict", "-m", out, "-q", queries, "-o", csv_out)
    assert result.exit_code == 0, result.output
    rows = csv_out.read_text().splitlines()
    assert rows[0].endswith("nearest,unknown") and len(rows) == 9


def test_predict_from_a_fewshot_file_never_imports_lightning(deployed, tmp_path):
    ckpt, support, queries = deployed
    out = tmp_path / "model.fewshot"
    _export(ckpt, support, out, "--no-open-set")
    code = (NO_LIGHTNING + "from metareg.cli import cli\n"
            f"sys.argv = ['metareg', 'predict', '-m', {str(out)!r}, '-q', {str(queries)!r}, '-o', 'p.json']\n"
            "cli()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert len(rows) == 8 and all("unknown" not in r for r in rows)
    # the check can fail: the training entry point does import Lightning under the same guard
    done = subprocess.run([sys.executable, "-c", NO_LIGHTNING + "import metareg.learner\n"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "lightning" in done.stderr


def test_a_phone_rotated_photo_loads_as_the_upright_one(tmp_path):
    upright = np.zeros((30, 20), dtype=np.uint8)
    upright[2:8, 3:17] = 255  # a bar near the top: any rotation moves it
    Image.fromarray(upright).save(tmp_path / "upright.png")
    # stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view"), as phones do
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    from metareg.predict_inputs import load_image

    a = load_image(tmp_path / "upright.png", 1, 16)
    b = load_image(tmp_path / "phone.jpg", 1, 16)
    assert (a.int() - b.int()).abs().max() <= 12  # JPEG noise only
    ignored = load_image(Image.open(tmp_path / "phone.jpg"), 1, 16)  # what reading without EXIF gives
    assert (a.int() - ignored.int()).abs().max() > 100


# ---------------------------------------------------------------------------- open set


def test_open_set_rejects_at_the_calibrated_rate_and_cli_says_unknown(deployed, tmp_path):
    ckpt, support, queries = deployed
    out = tmp_path / "model.fewshot"
    _export(ckpt, support, out, "--max-false-accept", "0.2")
    clf = metareg.FewShotClassifier.load(out)
    o = clf.open_set
    assert o["max_false_accept"] == 0.2 and o["false_accept"] <= 0.2
    # a threshold above every score makes every query unknown; the CLI shows it and keeps the nearest class
    clf.open_set = {**o, "threshold": float("inf")}
    clf.save(out)
    result = _invoke("predict", "-m", out, "-q", queries, "-o", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert all(r["predicted"] == "unknown" and r["unknown"] and r["nearest"].startswith("char") for r in rows)
    assert all(p.unknown for p in clf.predict([queries]))


def test_calibration_uses_only_validation_classes(deployed, monkeypatch):
    ckpt, support, _ = deployed
    from metareg import open_set

    seen = []
    real = open_set.episode_scores
    monkeypatch.setattr(open_set, "episode_scores",
                        lambda clf, split, **kw: seen.append(split) or real(clf, split, **kw))
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    record = open_set.calibrate(clf)
    from metareg_datasets.glyphs import glyphs

    data = glyphs(**GLYPHS)
    assert list(seen[0].classes) == list(data.validation.classes)
    assert not set(seen[0].classes) & (set(data.train.classes) | set(data.test.classes))
    assert record["calibrated_on"]["classes"] == data.validation.num_classes


def test_auroc_and_threshold_on_known_scores():
    from metareg.open_set import auroc, threshold_for

    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    unknown = torch.arange(100.0)
    t = threshold_for(unknown, 0.05)
    assert int((unknown > t).sum()) == 5  # exactly the 5% allowed


# ---------------------------------------------------------------------------- enrolment


# MetaOptNet's head is fitted on all classes jointly: it refits (ridge: the fast base learner).
@pytest.mark.parametrize("strategy, options", [("prototypicalnetworks", {}), ("metaoptnet", {"base_learner": "ridge"})])
def test_enrolling_one_by_one_predicts_as_fitting_all_at_once(strategy, options, tmp_path):
    ckpt = _checkpoint(tmp_path / "m.ckpt", strategy, options)
    full = _glyph_folders(tmp_path / "full", range(4))
    queries = _glyph_folders(tmp_path / "queries", range(4), per_class=2, first=3)
    first = tmp_path / "first"
    first.mkdir()
    for c in ("char00", "char01"):
        (full / c).rename(first / c)
    out = tmp_path / "model.fewshot"
    _export(ckpt, first, out, "--no-open-set")
    for c in ("char02", "char03"):
        result = _invoke("enroll", out, "--class", c, full / c)
        assert result.exit_code == 0, result.output
        assert ("only that class's row changed" if strategy == "prototypicalnetworks" else "refitted") in result.output
    for c in ("char00", "char01"):
        (first / c).rename(full / c)
    enrolled = metareg.FewShotClassifier.load(out)
    at_once = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(full)
    assert enrolled.classes == at_once.classes and enrolled.counts == [3, 3, 3, 3]
    assert torch.allclose(enrolled.predict_proba([queries]), at_once.predict_proba([queries]), atol=1e-4)

    result = _invoke("enroll", out, "--remove", "char01")
    assert result.exit_code == 0, result.output
    removed = metareg.FewShotClassifier.load(out)
    assert removed.classes == ["char00", "char02", "char03"]
    keep = [0, 2, 3]
    expected = at_once.predict_logits([queries])[:, keep]
    if strategy == "prototypicalnetworks":  # the other prototypes are untouched
        assert torch.allclose(removed.predict_logits([queries]), expected, atol=1e-4)
    (full / "char01").rename(tmp_path / "char01")
    refit = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(full)
    assert torch.allclose(removed.predict_proba([queries]), refit.predict_proba([queries]), atol=1e-4)


def test_python_api_enrols_in_memory_images(deployed, tmp_path):
    ckpt, support, queries = deployed
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    images = [Image.open(p) for p in sorted((queries / "char00").iterdir())]
    assert clf.add_class("new", images) == "incremental"
    assert clf.classes[-1] == "new" and clf.state["prototypes"].shape[0] == 5
    assert clf.remove_class("char02") == "incremental" and "char02" not in clf.classes
    clf.save(tmp_path / "api.fewshot")
    assert metareg.FewShotClassifier.load(tmp_path / "api.fewshot").classes == clf.classes


# ---------------------------------------------------------------------------- bad input


def _refused(*args, match: str):
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and match in result.output, result.output
    return result


def test_bad_input_gives_one_line_and_exit_2(deployed, tmp_path):
    ckpt, support, queries = deployed
    out = tmp_path / "model.fewshot"
    _export(ckpt, support, out, "--no-open-set")
    before = out.read_bytes()
    _refused("predict", "-m", tmp_path / "nothing.fewshot", "-q", queries, match="does not exist")
    _refused("predict", "-m", ckpt, "-q", queries, match="not a readable .fewshot file")
    torn = tmp_path / "torn.fewshot"
    torn.write_bytes(before[: len(before) // 2])
    _refused("predict", "-m", torn, "-q", queries, match="not a readable .fewshot file")
    safetensors = tmp_path / "m.safetensors"
    assert _invoke("export", "-c", ckpt, "-o", safetensors).exit_code == 0
    _refused("predict", "-m", safetensors, "-q", queries, match="not a .fewshot file")
    _refused("predict", "-m", out, "-s", support, "-q", queries, match="holds its own support set")
    _refused("predict", "-c", out, "-s", support, "-q", queries, match="predict -m")
    _refused("predict", "-q", queries, match="pass either --checkpoint")
    _refused("export", "-c", ckpt, "-o", tmp_path / "x.fewshot", match="pass --support DIR")
    _refused("export", "-c", ckpt, "-s", support, "-o", tmp_path / "x.fewshot", "--max-false-accept", "1.5",
             match="--max-false-accept must lie")
    _refused("enroll", out, "--class", "char01", queries / "char01", match="already exists")
    (tmp_path / "empty").mkdir()
    _refused("enroll", out, "--class", "new", tmp_path / "empty", match="holds no images")
    _refused("enroll", out, "--class", "new", tmp_path / "missing", match="does not exist")
    _refused("enroll", out, "--remove", "nope", match="not in the model")
    _refused("enroll", out, match="pass --class NAME")
    _refused("enroll", torn, "--remove", "char00", match="not a readable .fewshot file")
    assert out.read_bytes() == before  # nothing refused was written
    assert not (tmp_path / "x.fewshot").exists()


def test_enrolment_on_a_full_disk_keeps_the_previous_file(deployed, tmp_path):
    from tests.disk_faults import full_disk

    ckpt, support, queries = deployed
    models = tmp_path / "models"
    models.mkdir()
    out = models / "model.fewshot"
    _export(ckpt, support, out, "--no-open-set")
    before = out.read_bytes()
    with full_disk(models):
        _refused("enroll", out, "--class", "new", queries / "char00", match="No space left on device")
    assert out.read_bytes() == before and [p.name for p in models.iterdir()] == ["model.fewshot"]


def test_calibration_without_the_training_dataset_names_the_way_out(tmp_path):
    from tests.test_export import _checkpoint as tiny_checkpoint
    from tests.test_export import _folders

    ckpt = tiny_checkpoint(tmp_path / "t.ckpt")  # dataset "tiny": not in the registry
    support, _ = _folders(tmp_path)
    _refused("export", "-c", ckpt, "-s", support, "-o", tmp_path / "t.fewshot", match="--no-open-set")
    assert not (tmp_path / "t.fewshot").exists()
    assert _invoke("export", "-c", ckpt, "-s", support, "-o", tmp_path / "t.fewshot", "--no-open-set").exit_code == 0


# ---------------------------------------------------------------------------- ONNX forms


def test_onnx_with_stored_prototypes_and_embedding_only(deployed, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    ckpt, support, queries = deployed
    out, emb = tmp_path / "model.onnx", tmp_path / "embed.onnx"
    _export(ckpt, support, out, "--no-open-set")
    assert _invoke("export", "-c", ckpt, "-o", emb, "--embedding-only").exit_code == 0
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
    files = sorted(queries.rglob("*.png"))
    pixels = (clf.load_images(files).float() / 255).numpy()  # what a deployment feeds: file pixels / 255
    session = ort.InferenceSession(str(out))
    probs, logits, features = session.run(None, {"images": pixels})  # queries only: the support set is stored
    meta = json.loads(session.get_modelmeta().custom_metadata_map["metareg"])
    assert meta["classes"] == clf.classes and meta["preprocessing"]["crop"] == "center"
    assert torch.allclose(torch.tensor(probs), clf.predict_proba(files), atol=1e-4)
    (emb_features,) = ort.InferenceSession(str(emb)).run(None, {"images": pixels})
    assert np.allclose(emb_features, features, atol=1e-4) and emb_features.shape == (8, 8)
    # a strategy without a prototype head cannot store its support set in a graph: refused by name
    other = _checkpoint(tmp_path / "maml.ckpt", "maml")
    _refused("export", "-c", other, "-s", support, "-o", tmp_path / "maml.onnx", "--no-open-set",
             match="--embedding-only")
