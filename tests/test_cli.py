"""`metareg list`, `metareg info` and global switches, through the CLI as a user types them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import metareg
from metareg.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fixtures" / "fakedist"
METAREG = [sys.executable, "-m", "metareg.cli"]


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


def shell(*args, extra_path=None, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("METAREG_") or k == "METAREG_CACHE_DIR"}
    if extra_path:
        environ["PYTHONPATH"] = os.pathsep.join([str(extra_path), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.run([*METAREG, *args], capture_output=True, text=True, env=environ, cwd=ROOT)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and metareg.__version__ in result.output


def test_list_shows_four_non_empty_sections_with_providers():
    out = invoke("list").output
    for kind in ("backbones", "datasets", "strategies", "transforms"):
        assert f"\n{kind}\n" in f"\n{out}"
    assert "(none)" not in out
    assert "conv4" in out and "metareg-backbones 0.1.0" in out
    assert "prototypicalnetworks (protonet)" in out


def test_list_json_is_stable():
    doc = json.loads(invoke("list", "--json").output)
    assert doc["schema"] == 1 and set(doc) == {"schema", "metareg_version", "components", "broken"}
    assert set(doc["components"]) == {"backbones", "datasets", "strategies", "transforms"}
    conv4 = next(c for c in doc["components"]["backbones"] if c["name"] == "conv4")
    assert set(conv4) == {"name", "qualified_name", "aliases", "summary", "factory", "plugin", "distribution",
                          "version"}
    assert conv4["qualified_name"] == "backbones:conv4" and conv4["distribution"] == "metareg-backbones"


def test_list_filters_by_kind_and_pattern():
    doc = json.loads(invoke("list", "strategy", "proto*", "--json").output)
    assert list(doc["components"]) == ["strategies"]
    assert [c["name"] for c in doc["components"]["strategies"]] == ["prototypicalnetworks"]
    out = invoke("list", "conv").output  # a pattern alone filters every kind
    assert "conv4" in out and "prototypicalnetworks" not in out


def test_list_plugins_json_shows_each_first_party_plugin_with_version():
    doc = json.loads(invoke("list", "--plugins", "--json").output)
    rows = {p["distribution"]: p for p in doc["plugins"]}
    for dist in ("metareg-backbones", "metareg-datasets", "metareg-kornia", "metareg-strategies"):
        assert rows[dist]["version"] == "0.1.0" and rows[dist]["status"] == "ok"
        assert rows[dist]["hooks"], dist
    text = invoke("list", "--plugins").output
    assert "ENTRY POINT" in text and "metareg_backbones.plugin" in text


def test_info_shows_typed_options_from_the_signature():
    out = invoke("info", "strategy", "protonet").output
    assert "prototypicalnetworks" in out and "strategies:prototypicalnetworks" in out
    assert "distance" in out and "{euclidean|cosine}" in out and "'euclidean'" in out
    doc = json.loads(invoke("info", "backbones", "conv4", "--json").output)
    opts = {o["name"]: o for o in doc["options"]}
    assert opts["hidden"] == {"name": "hidden", "type": "int", "default": 64, "required": False,
                              "help": "filters per conv layer (64 is the few-shot standard)."}
    assert "channels" not in opts  # filled in from the dataset, not a user option


def test_info_unknown_name_is_a_clear_error():
    result = invoke("info", "strategy", "protonets")
    assert result.exit_code == 2
    assert "unknown strategy 'protonets'" in result.output and "Did you mean 'protonet'?" in result.output


def test_broken_plugin_leaves_list_working_and_strict_mode_fails():
    ok = shell("list", extra_path=FAKE)
    assert ok.returncode == 0, ok.stderr
    assert "broken plugins" in ok.stdout
    assert "fakeimporterror (metareg-fake-importerror 0.1): failed at import" in ok.stdout
    assert "conv4" in ok.stdout and "fakegood:fakenet  [name conflict]" in ok.stdout
    doc = json.loads(shell("list", "--json", extra_path=FAKE).stdout)
    assert {b["name"] for b in doc["broken"]} == {"fakeimporterror", "fakebadhook", "fakemisspelt", "fakeraises"}
    strict = shell("--strict", "list", extra_path=FAKE)
    assert strict.returncode != 0 and "metareg-fake-" in strict.stderr and "Traceback" not in strict.stderr
    env_strict = shell("list", extra_path=FAKE, env={"METAREG_STRICT": "1"})
    assert env_strict.returncode != 0 and "strict mode is on" in env_strict.stderr
    only = shell("--load-plugins", "backbones,fakegood", "list", "--plugins", "--json", extra_path=FAKE)
    status = {p["name"]: p["status"] for p in json.loads(only.stdout)["plugins"]}
    assert status["backbones"] == status["fakegood"] == "ok" and status["kornia"] == "disabled"


def test_load_plugins_keeps_the_cores_own_components_unless_disabled():
    # The default transform `none` is the core's: selecting plugins must not make `metareg run` lose it.
    only = json.loads(shell("--load-plugins", "backbones", "list", "transforms", "--json").stdout)
    assert [c["name"] for c in only["components"]["transforms"]] == ["none"]
    assert only["components"]["transforms"][0]["distribution"] == "metareg-core"
    dropped = json.loads(shell("--load-plugins", "backbones", "--disable-plugins", "core", "list", "transforms",
                               "--json").stdout)
    assert dropped["components"]["transforms"] == []


@pytest.fixture(scope="module")
def example_installed():
    pkg = ROOT / "examples" / "metareg-example"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(pkg)]
    subprocess.run(pip, check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "metareg-example"], capture_output=True)


def test_example_third_party_plugin_appears_once_installed(example_installed):
    doc = json.loads(shell("list", "--json").stdout)
    invert = [c for c in doc["components"]["transforms"] if c["name"] == "invert"]
    assert invert and invert[0]["distribution"] == "metareg-example" and invert[0]["version"] == "0.3.0"
    assert any(c["name"] == "mlp" for c in doc["components"]["backbones"])
    info = shell("info", "transform", "invert")
    assert info.returncode == 0 and "probability of inverting an image" in info.stdout


def test_list_is_fast_and_light():
    code = "import sys; from metareg.cli import main\ntry:\n main(['list'])\nexcept SystemExit: pass\n" \
           "print('HEAVY', [m for m in ('torch', 'pytorch_lightning', 'kornia') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def _plain_patterns(*, classes: int = 12, image_size: int = 28, channels: int = 1, seed: int = 0):
    """Random patterns, written as a plain function: no return annotation.

    classes: number of classes.
    image_size: height and width in pixels.
    channels: 1 (grey) or 3 (colour).
    seed: seeds the images.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(4)
    images = torch.randint(0, 256, (len(labels), channels, image_size, image_size), generator=g, dtype=torch.uint8)
    return metareg.FewShotDataset.from_arrays(images, labels, name="plainpatterns", seed=seed)


class _PlainDatasetPlugin:
    @metareg.hookimpl
    def metareg_datasets(self):
        yield metareg.DatasetSpec("plainpatterns", _plain_patterns, summary="Random patterns, unannotated factory")


def test_a_dataset_factory_without_a_return_annotation_keeps_its_image_size_option():
    # The kind comes from the record: a dataset's channels and image_size are the user's options whatever the
    # factory's annotations say (once decided by the annotation's class name, which silently dropped them).
    from metareg.plugins import load_plugins, set_plugins

    set_plugins(load_plugins(extra=[("plainplugin", _PlainDatasetPlugin())]))
    info = invoke("info", "dataset", "plainpatterns", "--json")
    assert info.exit_code == 0, info.output
    assert [o["name"] for o in json.loads(info.output)["options"]] == ["classes", "image_size", "channels", "seed"]
    shown = invoke("run", "--dataset", "plainpatterns", "--dataset-opt", "image_size=16", "--print-config")
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["dataset_options"]["image_size"] == 16
    # A backbone's are filled in from the dataset: never its options.
    backbone = json.loads(invoke("info", "backbone", "conv4", "--json").output)
    assert not {"channels", "image_size"} & {o["name"] for o in backbone["options"]}
