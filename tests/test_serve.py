"""`metareg serve`: the real server process on a free port, talked to over HTTP with httpx."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

import metareg
from tests.test_predict import _invoke, _tiny_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
METAREG = Path(sys.executable).parent / "metareg"
LIMITS = ["--max-images", "4", "--max-bytes", "200000", "--max-pixels", "250000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str):
    """``metareg serve ARGS --port P`` as a subprocess; yields its base URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen([str(METAREG), "serve", *args, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:  # start-up imports torch and the plugins: wait for it, or for the process to fail
            if proc.poll() is not None:
                pytest.fail(f"metareg serve exited {proc.returncode}: {proc.stderr.read()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def folders(root: Path, counts=(2, 3, 1), queries=6) -> tuple[Path, Path]:
    """Classes of grey images at distinct levels (pure-noise images all look alike to an untrained network)."""
    rng = np.random.default_rng(0)

    def image(level):
        return Image.fromarray(np.clip(level + rng.normal(0, 12, (20, 20)), 0, 255).astype(np.uint8))

    for c, n in enumerate(counts):
        (root / "support" / f"class{c}").mkdir(parents=True)
        for i in range(n):
            image(40 + 80 * c).save(root / "support" / f"class{c}" / f"{i}.png")
    (root / "query").mkdir()
    for i in range(queries):
        image(40 + 80 * (i % len(counts)) + 15).save(root / "query" / f"q{i}.png")
    return root / "support", root / "query"


def fewshot_model(root: Path) -> tuple[Path, Path]:
    """A .fewshot file of a tiny untrained prototypical network over 3 classes, and query images."""
    support, query = folders(root)
    model = root / "m.fewshot"
    metareg.FewShotClassifier.from_checkpoint(_tiny_checkpoint(root / "m.ckpt", "prototypicalnetworks")) \
        .fit(support).save(model)
    return model, query


def png(seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def files(*images: tuple[str, bytes]):
    return [("images", (name, data, "application/octet-stream")) for name, data in images]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model, query = fewshot_model(root)
    with running_server(str(model), *LIMITS) as url:
        yield url, model, query


def _queries(query: Path):
    return [(p.name, p.read_bytes()) for p in sorted(query.iterdir())]


def test_health_classes_and_the_page(server):
    url, model, _ = server
    health = httpx.get(url + "/health").json()
    assert health["classes"] == 3 and health["persists_to"] == str(model) and health["limits"]["max_images"] == 4
    assert httpx.get(url + "/classes").json() == {"classes": [{"name": "class0", "images": 2},
                                                              {"name": "class1", "images": 3},
                                                              {"name": "class2", "images": 1}]}
    page = httpx.get(url + "/")
    assert page.headers["content-type"].startswith("text/html") and "Enrol a class" in page.text


def test_predictions_are_the_python_apis(server):
    url, model, query = server
    answer = httpx.post(url + "/predict?top=3", files=files(*_queries(query)[:4]))
    assert answer.status_code == 200, answer.text
    clf = metareg.FewShotClassifier.load(model)
    expected = clf.predict(sorted(query.iterdir())[:4])
    for got, want in zip(answer.json()["predictions"], expected, strict=True):
        assert got["image"] == Path(want.source).name and got["label"] == want.label
        assert got["unknown"] is want.unknown is False
        assert got["probabilities"].keys() == want.probabilities.keys()
        for name, p in got["probabilities"].items():
            assert abs(p - want.probabilities[name]) < 1e-4
    two = httpx.post(url + "/predict?top=2", files=files(*_queries(query)[:1])).json()["predictions"][0]
    assert len(two["probabilities"]) == 2 and list(two["probabilities"])[0] == two["label"]


def test_enrolment_is_saved_in_the_model_file_and_removal_too(server):
    url, model, query = server
    name, data = _queries(query)[0]
    made = httpx.post(url + "/classes/zebra stripes", files=files((name, data)))
    assert made.status_code == 201, made.text
    assert made.json() == {"class": "zebra stripes", "images": 1, "how": "incremental", "classes": 4, "saved": True}
    assert metareg.FewShotClassifier.load(model).classes == ["class0", "class1", "class2", "zebra stripes"]
    # its own image is its prototype: distance zero, so it wins
    assert httpx.post(url + "/predict", files=files((name, data))).json()["predictions"][0]["label"] == "zebra stripes"
    again = httpx.post(url + "/classes/zebra stripes", files=files((name, data)))
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert httpx.delete(url + "/classes/zebra stripes").status_code == 200
    assert metareg.FewShotClassifier.load(model).classes == ["class0", "class1", "class2"]
    missing = httpx.delete(url + "/classes/zebra stripes")
    assert missing.status_code == 404 and "not in the model" in missing.json()["detail"]


@pytest.mark.parametrize("name", ["a\\b", ".hidden", " padded", "x" * 101, "tab\there"])
def test_class_names_that_could_be_paths_are_refused(server, name):
    url, model, query = server
    before = sorted(os.listdir(model.parent))
    answer = httpx.post(url + "/classes/" + quote(name, safe=""), files=files(_queries(query)[0]))
    assert answer.status_code == 400 and "class name" in answer.json()["detail"], answer.text
    assert sorted(os.listdir(model.parent)) == before


def test_limits_are_4xx_answers_naming_the_option(server):
    url, _, query = server
    five = httpx.post(url + "/predict", files=files(*[(f"{i}.png", png(seed=i)) for i in range(5)]))
    assert five.status_code == 413 and "--max-images" in five.json()["detail"] and "4" in five.json()["detail"]
    big = httpx.post(url + "/predict", files=files(("big.png", os.urandom(300_000))))
    assert big.status_code == 413 and "--max-bytes" in big.json()["detail"]
    flat = io.BytesIO()
    Image.new("L", (600, 600)).save(flat, "PNG")  # a few hundred bytes that decode to 360,000 > 250,000 pixels
    bomb = httpx.post(url + "/predict", files=files(("bomb.png", flat.getvalue())))
    assert bomb.status_code == 413, bomb.text
    assert "'bomb.png'" in bomb.json()["detail"] and "--max-pixels 250000" in bomb.json()["detail"]
    junk = httpx.post(url + "/predict", files=files(("notes.png", b"not an image")))
    assert junk.status_code == 400 and "'notes.png'" in junk.json()["detail"]
    none = httpx.post(url + "/predict", data={"x": "1"})
    assert none.status_code == 400 and "no images" in none.json()["detail"]
    top = httpx.post(url + "/predict?top=0", files=files(_queries(query)[0]))
    assert top.status_code == 400 and "top=0" in top.json()["detail"]
    # and the server is still answering
    assert httpx.post(url + "/predict", files=files(_queries(query)[0])).status_code == 200


def test_concurrent_predictions_during_enrolment_see_whole_class_sets(server):
    url, model, query = server
    images = files(*_queries(query)[:2])
    before, after = {"class0", "class1", "class2"}, {"class0", "class1", "class2", "new"}
    seen, errors = [], []

    def predict(n):
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                r = client.post(url + "/predict?top=100", files=images)
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                seen.extend(frozenset(p["probabilities"]) for p in r.json()["predictions"])

    def churn(n):
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                for r in (client.post(url + "/classes/new", files=files(_queries(query)[3])),
                          client.delete(url + "/classes/new")):
                    if r.status_code not in (200, 201):
                        errors.append(r.text)

    threads = [threading.Thread(target=predict, args=(6,)) for _ in range(4)] + [threading.Thread(target=churn,
                                                                                                  args=(4,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) == 4 * 6 * 2 and set(seen) <= {frozenset(before), frozenset(after)}
    assert set(metareg.FewShotClassifier.load(model).classes) == before


def test_a_failed_save_keeps_the_classes_as_they_were(server):
    url, model, query = server
    aside = model.with_suffix(".aside")
    model.rename(aside)
    model.mkdir()  # the next save would have to replace a folder: metareg.files refuses
    try:
        answer = httpx.post(url + "/classes/lost", files=files(_queries(query)[0]))
        assert answer.status_code == 400 and "is a directory" in answer.json()["detail"], answer.text
        assert [c["name"] for c in httpx.get(url + "/classes").json()["classes"]] == ["class0", "class1", "class2"]
    finally:
        model.rmdir()
        aside.rename(model)


def test_bad_command_lines_exit_2_before_serving(tmp_path, monkeypatch):
    assert "either MODEL" in _fails()
    assert "needs --support" in _fails("-c", "m.ckpt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "in use" in _fails(str(tmp_path / "m.fewshot"), "--port", str(taken.getsockname()[1]))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert "metareg-core[serve]" in _fails(str(tmp_path / "m.fewshot"))


def _fails(*args: str) -> str:
    result = _invoke("serve", *args)
    assert result.exit_code == 2, result.output
    return result.output


def test_a_checkpoint_and_support_folder_serve_without_saving(tmp_path, monkeypatch):
    import asyncio

    import uvicorn

    support, _ = folders(tmp_path)
    ckpt = _tiny_checkpoint(tmp_path / "m.ckpt", "prototypicalnetworks")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    result = _invoke("serve", "-c", ckpt, "--support", support, "--port", str(free_port()))
    assert result.exit_code == 0, result.output

    async def talk():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(served["app"]), base_url="http://serve") as client:
            return (await client.get("/health")).json(), await client.post("/classes/extra", files=files(("x.png",
                                                                                                           png())))
    health, made = asyncio.run(talk())
    assert health["persists_to"] is None
    assert made.status_code == 201 and made.json()["saved"] is False
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt", "query", "support"]
    assert torch.load(ckpt, weights_only=True)  # the checkpoint is untouched and still loads
