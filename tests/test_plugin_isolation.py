"""Plugins cannot hijack or bring down each other (issue 12, section 3).

Each misbehaving plugin is a fake installed distribution in tests/fixtures/hostile/<case>,
installed beside the real first-party plugins by putting its folder on PYTHONPATH (a
`metareg` subprocess, as a user runs it) or on sys.path (CliRunner, for `metareg run`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import metareg
from metareg.cli import cli
from metareg.plugins import load_plugins
from metareg.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
SWITCHES = ("METAREG_STRICT", "METAREG_PLUGINS", "METAREG_DISABLE_PLUGINS")
# The smallest run the CLI accepts; it is always refused before training here.
RUN = ["run", "--dataset", "glyphs", "--max-steps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def no_switches(monkeypatch):
    # The CLI writes its switches into os.environ (for DDP workers); undo that after each test.
    # (setenv first: delenv of an absent variable records nothing to restore.)
    for var in SWITCHES:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def metareg_cmd(*args, case=None, env=None):
    environ = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    if case:
        environ["PYTHONPATH"] = os.pathsep.join([str(HOSTILE / case), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "metareg.cli", *args], capture_output=True, text=True,
                          env=environ, cwd=ROOT)


def plugin_rows(result) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for p in json.loads(result.stdout)["plugins"]:
        rows.setdefault(p["name"], []).append(p)
    return rows


# -- a name and an alias conflict alike ------------------------------------------------------

def test_a_strategy_named_like_a_first_party_alias_is_refused_not_run(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(HOSTILE / "alias"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [*RUN, "--strategy", "protonet", "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    text = result.output
    assert "strategy 'protonet' is registered by more than one plugin" in text
    assert "fakealias:protonet  from metareg-fake-alias 1.0" in text
    assert "strategies:prototypicalnetworks (alias 'protonet')  from metareg-strategies" in text
    assert "Traceback" not in text and not out.exists()


def test_qualified_and_canonical_names_still_pick_one_when_an_alias_is_taken(monkeypatch):
    listing = metareg_cmd("list", "strategies", case="alias")
    assert "strategies:prototypicalnetworks (protonet)  [alias conflict: protonet]" in listing.stdout
    assert "fakealias:protonet  [name conflict]" in listing.stdout
    monkeypatch.syspath_prepend(str(HOSTILE / "alias"))
    reg = Registry(load_plugins(strict=False))
    assert set(reg.conflicts("strategies")) == {"protonet"}
    for name, provider in [("strategies:protonet", "metareg-strategies"),
                           ("metareg-strategies:protonet", "metareg-strategies"),
                           ("prototypicalnetworks", "metareg-strategies"),
                           ("fakealias:protonet", "metareg-fake-alias")]:
        assert reg.get("strategies", name).plugin.distribution == provider, name


# -- a hook that calls sys.exit() -----------------------------------------------------------

def test_a_hook_calling_sys_exit_is_a_broken_plugin_not_the_end_of_every_command():
    result = metareg_cmd("list", case="exits")
    assert result.returncode == 0, result.stderr
    assert "fakeexits (metareg-fake-exits 0.5): failed at metareg_backbones: " \
           "SystemExit: the plugin called sys.exit(3)" in result.stdout
    assert "conv4" in result.stdout and "prototypicalnetworks" in result.stdout
    strict = metareg_cmd("--strict", "list", case="exits")
    assert strict.returncode == 2 and "sys.exit(3)" in strict.stderr and "metareg-fake-exits" in strict.stderr


class _ExitsWhenInspected:
    """pluggy lists a plugin's attributes while registering: plugin code runs at that stage too."""

    def __dir__(self):
        sys.exit("bye")


class _InterruptedHook:
    @metareg.hookimpl
    def metareg_backbones(self):
        raise KeyboardInterrupt


def test_sys_exit_at_import_and_register_is_recorded_and_ctrl_c_still_stops(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = metadata.EntryPoint(name="exitsonimport", value="exits_on_import", group="metareg")
    plugins = load_plugins([ep], extra=[("exitsonregister", _ExitsWhenInspected())], strict=False)
    status = {p.name: (p.status, p.stage, p.error) for p in plugins.plugins}
    assert status["exitsonimport"] == ("broken", "import", "SystemExit: the plugin called sys.exit(4)")
    assert status["exitsonregister"] == ("broken", "register", "SystemExit: the plugin called sys.exit('bye')")
    with pytest.raises(KeyboardInterrupt):
        load_plugins([], extra=[("interrupted", _InterruptedHook())], strict=False)


# -- an entry point named like another distribution's ---------------------------------------

def test_a_namesake_entry_point_is_blamed_and_the_first_party_plugin_keeps_working():
    result = metareg_cmd("list", "--plugins", "--json", case="samename")
    assert result.returncode == 0, result.stderr
    by_dist = {p["distribution"]: p for p in plugin_rows(result)["backbones"]}
    assert by_dist["metareg-backbones"]["status"] == "ok"
    newcomer = by_dist["metareg-fake-samename"]
    assert newcomer["status"] == "broken"
    assert "entry-point name 'backbones' is already used by metareg-backbones" in newcomer["error"]
    assert "conv4" in metareg_cmd("list", "backbones", case="samename").stdout


def test_strict_advice_disables_the_newcomer_alone():
    strict = metareg_cmd("--strict", "list", case="samename")
    assert strict.returncode == 2
    assert "METAREG_DISABLE_PLUGINS=metareg-fake-samename" in strict.stderr
    assert "METAREG_DISABLE_PLUGINS=backbones" not in strict.stderr
    advised = metareg_cmd("--strict", "list", "backbones", case="samename",
                          env={"METAREG_DISABLE_PLUGINS": "metareg-fake-samename"})
    assert advised.returncode == 0, advised.stderr
    assert "conv4" in advised.stdout and "samename-net" not in advised.stdout


def _fake_dist(root: Path, dist: str, entry_point: str, module: str, backbone: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[metareg]\n{entry_point} = {module}\n")
    (root / f"{module}.py").write_text(
        "import metareg\n\n@metareg.hookimpl\ndef metareg_backbones():\n"
        f"    yield metareg.BackboneSpec({backbone!r}, 'x:y', summary='s')\n"
    )


def test_between_two_third_parties_the_conventional_name_wins_else_the_first_found(tmp_path, monkeypatch):
    dirs = {}
    for dist in ("metareg-alpha", "metareg-shared", "metareg-other"):
        dirs[dist] = tmp_path / dist
        _fake_dist(dirs[dist], dist, "shared", dist.replace("-", "_") + "_mod", dist + "-net")
        monkeypatch.syspath_prepend(str(dirs[dist]))

    def load(*dists):
        eps = [ep for d in dists for found in metadata.distributions(path=[str(dirs[d])]) for ep in found.entry_points]
        plugins = load_plugins(eps, strict=False)
        return {p.plugin.distribution for p in plugins.provided}, [p.distribution for p in plugins.broken]

    # the one named metareg-<entry point> keeps the name, in either order
    assert load("metareg-alpha", "metareg-shared") == ({"metareg-shared"}, ["metareg-alpha"])
    assert load("metareg-shared", "metareg-alpha") == ({"metareg-shared"}, ["metareg-alpha"])
    # otherwise the first found (what Python would import first) keeps it
    assert load("metareg-alpha", "metareg-other") == ({"metareg-alpha"}, ["metareg-other"])


# -- plugin selection names that match nothing -----------------------------------------------

@pytest.mark.parametrize("how", ["flag", "env"])
def test_load_plugins_naming_no_plugin_is_refused_with_the_names_to_choose_from(how):
    args, env = (["--load-plugins", "backbones,bogus"], None) if how == "flag" else \
        ([], {"METAREG_PLUGINS": "backbones,bogus"})
    result = metareg_cmd(*args, "list", env=env)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "'bogus'" in lines[0]
    assert "backbones (metareg-backbones)" in lines[0] and "strategies (metareg-strategies)" in lines[0]


def test_load_plugins_naming_no_plugin_stops_run_before_any_work(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["--load-plugins", "bogus", *RUN, "--output-dir", str(out)])
    assert result.exit_code == 2 and "matches no installed plugin" in result.output
    assert not out.exists()


def test_distribution_names_select_in_any_spelling_and_unknown_disables_only_warn():
    chosen = metareg_cmd("--load-plugins", "metareg_backbones", "list", "--plugins", "--json")
    assert chosen.returncode == 0, chosen.stderr
    status = {name: rows[0]["status"] for name, rows in plugin_rows(chosen).items()}
    assert status["backbones"] == "ok" and status["strategies"] == "disabled"
    typo = metareg_cmd("--disable-plugins", "kornai", "list", "transforms")
    assert typo.returncode == 0
    assert "Warning: --disable-plugins / METAREG_DISABLE_PLUGINS names 'kornai', which matches no installed" \
        in typo.stderr
    assert "metareg-kornia" in typo.stdout  # not disabled: the typo is visible in the listing too


# -- an entry-point value that is no module reference -----------------------------------------

def test_an_invalid_entry_point_value_names_the_distribution_and_the_line():
    result = metareg_cmd("list", case="badvalue")
    assert result.returncode == 0, result.stderr
    assert ("badvalue (metareg-fake-badvalue 0.7): failed at entry point: invalid entry point in "
            "metareg-fake-badvalue 0.7 (entry_points.txt line 2: badvalue = \"not a valid::ref\")") in result.stdout
    assert "NoneType" not in result.stdout and "conv4" in result.stdout
