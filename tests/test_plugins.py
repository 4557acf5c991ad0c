"""Plugin loading and lookup, against a fake installed environment (tests/fixtures/fakedist)."""
from __future__ import annotations

import dataclasses
from importlib import metadata
from pathlib import Path

import pytest

import metareg
from metareg.plugins import load_plugins
from metareg.registry import Registry

FAKE = Path(__file__).parent / "fixtures" / "fakedist"


def fake_entry_points(*names):
    eps = []
    for dist in metadata.distributions(path=[str(FAKE)]):
        for ep in dist.entry_points:
            if ep.group == "metareg" and (not names or ep.name in names):
                eps.append(ep)
    return sorted(eps, key=lambda e: e.name)


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    for var in ("METAREG_STRICT", "METAREG_PLUGINS", "METAREG_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return fake_entry_points


def by_name(plugins):
    return {p.name: p for p in plugins.plugins}


def test_good_plugin_is_attributed_to_its_distribution(fake_env):
    plugins = load_plugins(fake_env("fakegood"))
    info = by_name(plugins)["fakegood"]
    assert (info.status, info.distribution, info.version) == ("ok", "metareg-fake-good", "1.0")
    assert info.hooks == ("metareg_backbones",)
    entry = Registry(plugins).get("backbones", "fakenet")
    assert entry.plugin is info and entry.qualified_name == "fakegood:fakenet"
    net = entry.record.load()(channels=1, image_size=8, width=3)
    assert net.out_features == 3


@pytest.mark.parametrize(
    "plugin, stage, message",
    [
        ("fakeimporterror", "import", "metareg_dependency_that_is_not_installed"),
        ("fakebadhook", "register", "unexpected_argument"),
        ("fakemisspelt", "register", "metareg_backbone"),
        ("fakeraises", "metareg_transforms", "fake plugin exploded"),
    ],
)
def test_broken_plugin_is_isolated_and_explained(fake_env, plugin, stage, message):
    plugins = load_plugins(fake_env(plugin, "fakegood"))
    info = by_name(plugins)[plugin]
    assert info.status == "broken" and info.stage == stage
    assert message in info.error
    # the good plugin still works, and nothing of the broken one is registered
    reg = Registry(plugins)
    assert reg.get("backbones", "fakenet").plugin.name == "fakegood"
    assert all(p.plugin.name != plugin for p in plugins.provided)
    assert not plugins.manager.is_registered(plugins.manager.get_plugin(plugin))


def test_strict_mode_names_the_distribution(fake_env, monkeypatch):
    with pytest.raises(metareg.PluginError, match="metareg-fake-importerror 0.1"):
        load_plugins(fake_env("fakegood", "fakeimporterror"), strict=True)
    monkeypatch.setenv("METAREG_STRICT", "1")
    with pytest.raises(metareg.PluginError, match="failed at import"):
        load_plugins(fake_env("fakeimporterror"))


def test_only_and_disabled_switches(fake_env, monkeypatch):
    plugins = load_plugins(fake_env(), only=["fakegood"])
    status = {n: p.status for n, p in by_name(plugins).items()}
    assert status["fakegood"] == "ok"
    assert {s for n, s in status.items() if n != "fakegood"} == {"disabled"}
    monkeypatch.setenv("METAREG_DISABLE_PLUGINS", "metareg-fake-good,fakeconflict")  # distribution or entry point
    status = {n: p.status for n, p in by_name(load_plugins(fake_env("fakegood", "fakeconflict"))).items()}
    assert status == {"fakegood": "disabled", "fakeconflict": "disabled"}


def test_conflicting_names_need_a_qualified_name(fake_env):
    reg = Registry(load_plugins(fake_env("fakegood", "fakeconflict")))
    with pytest.raises(metareg.ComponentConflict) as err:
        reg.get("backbones", "fakenet")
    text = str(err.value)
    assert "metareg-fake-good 1.0" in text and "metareg-fake-conflict 2.0" in text
    assert "fakegood:fakenet" in text
    assert reg.get("backbones", "fakeconflict:fakenet").plugin.distribution == "metareg-fake-conflict"
    assert reg.get("backbones", "metareg-fake-good:fakenet").plugin.name == "fakegood"
    assert set(reg.conflicts("backbones")) == {"fakenet"}


def test_unknown_name_suggests_the_closest(fake_env):
    reg = Registry(load_plugins(fake_env("fakegood")))
    with pytest.raises(metareg.ComponentNotFound) as err:
        reg.get("backbone", "fakenett")
    assert "Did you mean 'fakenet'?" in str(err.value)
    assert "Available backbones: fakenet" in str(err.value)
    assert reg.get("backbones", "fn").record.name == "fakenet"  # aliases resolve
    with pytest.raises(metareg.ComponentNotFound, match="unknown kind"):
        reg.get("models", "fakenet")


def test_python_api_plugins_register_through_the_same_door():
    class Inline:
        @metareg.hookimpl
        def metareg_strategies(self):
            yield metareg.StrategySpec("inline", "metareg_strategies.protonet:PrototypicalNetworks", summary="x")

    plugins = load_plugins([], extra=[("inline", Inline())])
    assert Registry(plugins).get("strategy", "inline").plugin.name == "inline"


def test_first_party_plugins_are_entry_points_of_their_own_distributions():
    plugins = load_plugins()
    first_party = {p.distribution: p for p in plugins.plugins if (p.distribution or "").startswith("metareg-")}
    for dist in ("metareg-backbones", "metareg-datasets", "metareg-kornia", "metareg-strategies"):
        assert dist in first_party, f"{dist} is not registered in the metareg entry-point group"
        assert first_party[dist].status == "ok", first_party[dist].error
        assert first_party[dist].version == metadata.version(dist)


def test_records_are_frozen_and_validated():
    spec = metareg.BackboneSpec("x", "a.b:c", summary="s", aliases=["y"])
    assert spec.aliases == ("y",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "z"
    for bad in (dict(name="", factory="a:b"), dict(name="a:b", factory="a:b"), dict(name="x", factory="nocolon"),
                dict(name="x", factory=3), dict(name="x", factory="a:b", summary="two\nlines")):
        with pytest.raises(ValueError):
            metareg.BackboneSpec(**bad)


def test_import_metareg_and_loading_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, metareg; from metareg.plugins import load_plugins; from metareg.registry import Registry;"
        "r = Registry(load_plugins()); [r.components(k) for k in ('backbones','datasets','strategies','transforms')];"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'kornia', 'numpy') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"listing imported {out.stdout.strip()}"
