"""`metareg new-plugin`: name validation, file layout, and a scaffolded plugin that
installs, lists and passes its own tests (end to end, in the running environment)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metareg import kinds
from metareg.cli import cli
from metareg.scaffold import KIND_CHOICES, ScaffoldError, render, validate_name

ALL_HOOKS = {kind.hook for kind in kinds.ALL}


def _metareg_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("metareg")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "metareg.cli"]


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("9lives", "Python identifier"),
        ("a.b", "Python identifier"),
        ("with space", "Python identifier"),
        ("class", "Python identifier"),
        ("", "Python identifier"),
        ("Foo", "lower case"),
        ("metareg-foo", "leave out the 'metareg-' prefix"),
        ("foo-", "must not start or end"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        validate_name(name)
    result = CliRunner().invoke(cli, ["new-plugin", name, "--output", "unused"])
    assert result.exit_code == 2
    assert fragment in result.output
    assert not Path("unused").exists()


def test_good_names_map_to_import_names():
    assert validate_name("my-backbones") == "my_backbones"
    assert validate_name("x2") == "x2"


def test_layout_and_naming_convention(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "my-aug", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "metareg-my-aug"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml",
        "README.md",
        "metareg_my_aug/__init__.py",
        "metareg_my_aug/plugin.py",
        "metareg_my_aug/backbones.py",
        "metareg_my_aug/datasets.py",
        "metareg_my_aug/transforms.py",
        "metareg_my_aug/strategies.py",
        "tests/test_plugin.py",
    }
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "metareg-my-aug"' in pyproject
    assert '[project.entry-points.metareg]\nmy-aug = "metareg_my_aug.plugin"' in pyproject
    assert "pip install -e" in result.output and "metareg list my-aug-*" in result.output
    for path in root.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")  # valid Python after templating


def test_plugin_module_imports_only_metareg(tmp_path):
    files = render("light", KIND_CHOICES)
    tree = ast.parse(files["metareg_light/plugin.py"])
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported == ["metareg"]
    hooks = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert hooks == ALL_HOOKS


@pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.singular)
def test_every_kind_has_an_example_registered_through_its_hook_and_checked_by_its_check(kind, tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "one", "--kind", kind.singular, "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "metareg-one"
    tree = ast.parse((root / "metareg_one" / "plugin.py").read_text())
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == [kind.hook]
    assert f"metareg.{kind.spec}(" in ast.unparse(tree)
    tests = (root / "tests" / "test_plugin.py").read_text()
    assert f"from metareg.testing import {kind.check}\n" in tests and f"{kind.check}(" in tests.split("import", 3)[-1]


def test_kind_selects_components(tmp_path):
    result = CliRunner().invoke(
        cli, ["new-plugin", "pair", "--kind", "strategy", "--kind", "backbone", "--output", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "metareg-pair" / "metareg_pair"
    assert sorted(p.name for p in pkg.glob("*.py")) == ["__init__.py", "backbones.py", "plugin.py", "strategies.py"]
    hooks = {n.name for n in ast.parse((pkg / "plugin.py").read_text()).body if isinstance(n, ast.FunctionDef)}
    assert hooks == {"metareg_backbones", "metareg_strategies"}
    tests = (tmp_path / "metareg-pair" / "tests" / "test_plugin.py").read_text()
    assert "check_strategy" in tests and "check_backbone" in tests and "check_dataset" not in tests


def test_refuses_to_overwrite(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["new-plugin", "twice", "--output", str(tmp_path)]).exit_code == 0
    marker = tmp_path / "metareg-twice" / "metareg_twice" / "plugin.py"
    marker.write_text("# my edits\n")
    result = runner.invoke(cli, ["new-plugin", "twice", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "already exists; refusing to overwrite" in result.output
    assert marker.read_text() == "# my edits\n"


def test_unknown_kind_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "x", "--kind", "optimizer", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "optimizer" in result.output and "backbone" in result.output


@pytest.fixture
def installed_plugin(tmp_path):
    """A scaffolded plugin, pip-installed (editable) into this environment for the test."""
    name = f"scaffold{os.getpid()}"
    result = CliRunner().invoke(cli, ["new-plugin", name, "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / f"metareg-{name}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(root)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr
    try:
        yield name, root
    finally:
        subprocess.run([*pip, "uninstall", "-y", f"metareg-{name}"], capture_output=True, text=True)
        shutil.rmtree(root, ignore_errors=True)


def test_scaffolded_plugin_installs_lists_and_passes_its_tests(installed_plugin):
    name, root = installed_plugin
    env = {**os.environ, "METAREG_STRICT": "1"}  # any plugin failure would fail the listing
    listing = subprocess.run([*_metareg_cmd(), "list", "--json"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    mine = {
        kind: [c for c in comps if c["distribution"] == f"metareg-{name}"] for kind, comps in doc["components"].items()
    }
    assert {k: [c["name"] for c in cs] for k, cs in mine.items()} == {
        "backbones": [f"{name}-cnn"],
        "datasets": [f"{name}-patterns"],
        "strategies": [f"{name}-cosine"],
        "transforms": [f"{name}-jitter"],
    }
    assert all(c["plugin"] == name and c["version"] == "0.1.0" for cs in mine.values() for c in cs)

    info = subprocess.run([*_metareg_cmd(), "info", "backbone", f"{name}-cnn"], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "width" in info.stdout and "filters in each conv layer" in info.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "6 passed" in tests.stdout
