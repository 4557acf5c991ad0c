"""`pip install --find-links dist metareg` in a fresh virtual environment, used through its own command.

The wheels are built the way `make dist` builds them. The fresh environment gets the dev
environment's third-party packages (torch & co., 5.5 GB if reinstalled) through a folder of
links to just those, and none of its metareg installs: they are editable, and their finders
and metadata would answer instead of the wheels. pip then installs from the wheels alone
(--no-index), offline.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"metareg-backbones", "metareg-datasets", "metareg-kornia", "metareg-strategies"}
# Distributions that register components: the first-party plugins, and the core for its own (`none`).
PROVIDERS = FIRST_PARTY | ({"metareg-core"} if "metareg" in tomllib.loads(
    (ROOT / "pyproject.toml").read_text())["project"].get("entry-points", {}) else set())
# Entries of the dev site-packages that must not reach the fresh environment: metareg's own (editable)
# distributions, their import hooks, pip (the dev one drives the install), and every .pth file.
NOT_THIRD_PARTY = re.compile(r"^(metareg|__editable__|pip$|pip-|__pycache__$)|\.pth$", re.IGNORECASE)
TINY_RUN = ["--max-steps", "2", "--max-epochs", "-1", "--dataset-opt", "image_size=14",
            "--dataset-opt", "samples_per_class=6", "--backbone-opt", "hidden=8", "--ways", "3", "--shots", "1",
            "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2", "--epoch-length", "2",
            "--test-num-tasks", "4",
            "--val-num-tasks", "2", "--eval-meta-batch-size", "4", "--no-progress"]

pytestmark = pytest.mark.slow


def _offline_build_possible() -> str | None:
    """Why the wheels cannot be built here without an index, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return f"setuptools is not installed in {sys.prefix} (wheels are built without build isolation, offline)"
    major = int(metadata.version("setuptools").split(".")[0])
    if major < 77:
        return f"setuptools {metadata.version('setuptools')} in {sys.prefix} is older than the 77 the builds require"
    return None


def _fresh_env(where: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment seeing the dev environment's third-party packages and nothing of metareg."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    links = where / "third-party"
    links.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not NOT_THIRD_PARTY.search(entry.name):
            (links / entry.name).symlink_to(entry)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dev-third-party.pth").write_text(f"{links}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAREG_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    if "METAREG_CACHE_DIR" in os.environ:  # the test cache (glyphs rendered once)
        env["METAREG_CACHE_DIR"] = os.environ["METAREG_CACHE_DIR"]
    return python, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    reason = _offline_build_possible()
    if reason:
        pytest.skip(f"cannot build the wheels offline: {reason}")
    tmp = tmp_path_factory.mktemp("wheel-install")
    dist = tmp / "dist"
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_dists.py"), str(dist)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    python, env = _fresh_env(tmp / "venv")
    # What a user types (with the dev environment's pip, pointed at the new environment).
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
                          "install", "-q", "--no-index", "--find-links", str(dist), "metareg"],
                         capture_output=True, text=True, env=env)
    assert pip.returncode == 0, pip.stderr[-3000:]
    outside = tmp / "elsewhere"  # not the repository: nothing of it on sys.path
    outside.mkdir()
    return python, env, outside, dist


def test_make_dist_builds_a_wheel_for_the_core_the_metapackage_and_every_plugin(installed):
    dist = installed[3]
    wheels = {p.name.split("-")[0] for p in dist.glob("*.whl")}
    plugins = {p.parent.name.replace("-", "_") for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    assert wheels == {"metareg", "metareg_core"} | plugins
    # The route to learn2learn that the missing-learn2learn hint names ships in the plugin's wheel.
    (l2l,) = dist.glob("metareg_learn2learn-*.whl")
    assert "metareg_learn2learn/install.py" in zipfile.ZipFile(l2l).namelist()


def test_the_installed_command_lists_the_first_party_components_from_the_wheels(installed):
    python, env, outside, _ = installed
    listing = subprocess.run([str(python.with_name("metareg")), "list", "--json"], cwd=outside, env=env,
                             capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    assert doc["broken"] == []
    providers = {c["distribution"] for kind in doc["components"].values() for c in kind}
    assert providers == PROVIDERS
    assert "prototypicalnetworks" in {c["name"] for c in doc["components"]["strategies"]}
    # Every module and every distribution's metadata comes from the new environment's site-packages.
    where = subprocess.run(
        [str(python), "-c",
         "import json, sys, importlib, importlib.metadata as m\n"
         "names = ['metareg', 'metareg-core', *sys.argv[1:]]\n"
         "mods = ['metareg', *(n.replace('-', '_') for n in sys.argv[1:])]\n"
         "print(json.dumps({'files': [importlib.import_module(x).__file__ for x in mods],\n"
         "  'dists': [str(m.distribution(n).locate_file('')) for n in names],\n"
         "  'requires': m.requires('metareg')}))", *sorted(FIRST_PARTY)],
        cwd=outside, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    found = json.loads(where.stdout)
    venv = python.parent.parent.resolve()
    for path in found["files"] + found["dists"]:
        assert Path(path).resolve().is_relative_to(venv), f"{path} is not from the installed wheels in {venv}"
    required = {re.split(r"[<>=]", r)[0] for r in found["requires"] if "extra ==" not in r}
    assert required == {"metareg-core"} | FIRST_PARTY


def test_the_installed_command_trains_prototypical_networks(installed, tmp_path):
    python, env, outside, _ = installed
    out = tmp_path / "run"
    result = subprocess.run([str(python.with_name("metareg")), "run", "--strategy", "prototypicalnetworks",
                             *TINY_RUN, "--output-dir", str(out)], cwd=outside, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^3-way 1-shot: \d+\.\d ± \d+\.\d % \(95% CI, 4 test episodes\)$", result.stdout, re.M)
    versions = json.loads((out / "summary.json").read_text())["versions"]
    assert set(versions["plugins"]) == PROVIDERS


def test_the_wheels_requirements_hold_in_the_new_environment(installed):
    python, env, _, _ = installed
    check = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
                            "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
