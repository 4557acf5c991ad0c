"""Each distribution declares what it imports and imports what it declares; the lower bounds are ones we ran.

Imports are read from the source (every ``import`` statement, lazy ones inside functions
included, and ``pytest.importorskip`` / ``importlib.import_module`` of a literal name) and
mapped to distributions through the installed metadata of this environment.
"""
from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import metareg

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
# Imported but not declared, on purpose: learn2learn's only sdist does not build on Python >= 3.11,
# so pip cannot install it as a dependency; its plugin shows as broken with the command that installs it.
UNDECLARED = {"learn2learn": "rebuilt by python -m metareg_learn2learn.install"}
# Declared but never imported: tools the tests run as commands (setuptools builds the wheels).
TOOLS = {"ruff", "setuptools"}
_DYNAMIC = {"importorskip", "import_module"}
# Import name -> distribution, for optional imports whose distribution may be absent and is named otherwise.
NOT_INSTALLED = {"faiss": "faiss-cpu", "multipart": "python-multipart", "python_multipart": "python-multipart"}


def _own_distribution(module: str) -> str | None:
    """metareg -> metareg-core, metareg_<name> -> metareg-<name>: the first-party import names."""
    if module == "metareg":
        return "metareg-core"
    return canonicalize_name(module) if module.startswith("metareg_") else None


def imported_modules(folders: list[Path]) -> dict[str, set[str]]:
    """Top-level modules imported by the .py files under ``folders``, outside the standard library and
    outside the folders themselves (conftest, sibling test helpers), each with the files importing it."""
    # tests/fixtures holds deliberately broken plugins (imports of packages that do not exist).
    files = [f for folder in folders for f in folder.rglob("*.py") if not {"build", "fixtures"} & set(f.parts)]
    # Tests also import the repository's scripts and benchmarks (bench/ put on sys.path).
    local = {"tests", "conftest"} | {f.stem for f in files} | {f.parent.name for f in files} \
        | {f.stem for folder in ("bench", "scripts") for f in (ROOT / folder).glob("*.py")}
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in _DYNAMIC
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and (top not in local or _own_distribution(top)):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(module: str) -> str | None:
    own = _own_distribution(module)
    if own:
        return own
    dists = [d for d in _module_owners().get(module, []) if not d.lower().startswith("metareg")]
    if dists:
        return canonicalize_name(dists[0])
    # Not installed here (an extra that make setup leaves out): the distribution by its usual name.
    return canonicalize_name(NOT_INSTALLED.get(module, module))


def requirements(project: dict, extra: str | None = None) -> dict[str, Requirement]:
    """The requirements of a [project] table (or of one of its extras), by canonical name."""
    lines = project.get("dependencies", []) if extra is None else project["optional-dependencies"][extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def mismatches(project: dict, folders: list[Path], allowed: set[str] = frozenset()) -> list[str]:
    """What ``folders`` import without ``project`` declaring it, and what it declares without importing.

    ``allowed``: distributions that count as declared (a test folder may import what the package it tests
    depends on). Extras count as declared; an extra's requirements need not be imported (they serve tests).
    """
    declared = set(requirements(project))
    extras = {name for extra in project.get("optional-dependencies", {}) for name in requirements(project, extra)}
    problems, used = [], set()
    for module, files in sorted(imported_modules(folders).items()):
        dist = distribution_of(module)
        used.add(dist)
        if module in UNDECLARED or dist in declared | extras | allowed | {canonicalize_name(project["name"])}:
            continue
        where = ", ".join(sorted(files)[:2])
        problems.append(f"{project['name']}: {where} imports {module!r} ("
                        f"{dist or 'no installed distribution'}), which is not declared")
    for name in sorted(declared - used):
        problems.append(f"{project['name']}: declares {name!r} but never imports it")
    return problems


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _all_requirements(folder: Path) -> list[tuple[str, Requirement]]:
    """(``name`` or ``name[extra]``, requirement) for every requirement of a distribution, extras included."""
    project = _project(folder)
    groups = [None, *project.get("optional-dependencies", {})]
    return [(f"{project['name']}{'[' + g + ']' if g else ''}", r)
            for g in groups for r in requirements(project, g).values()]


def _packages(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("metareg") and (p / "__init__.py").exists()]


@pytest.mark.parametrize("folder", [ROOT, *PLUGINS], ids=lambda p: p.name)
def test_a_distribution_declares_exactly_what_its_code_imports(folder):
    assert _packages(folder), f"no package found in {folder}"
    assert mismatches(_project(folder), _packages(folder)) == []


def test_the_tests_import_only_what_the_dev_extra_and_the_tested_distributions_declare():
    core = _project(ROOT)
    tested = {canonicalize_name(r.name) for folder in [ROOT, *PLUGINS] for _, r in _all_requirements(folder)}
    tested |= {canonicalize_name(_project(folder)["name"]) for folder in PLUGINS}
    tests = [ROOT / "tests", *(p / "tests" for p in PLUGINS if (p / "tests").is_dir())]
    problems = [p for p in mismatches({"name": "tests", "dependencies": core["optional-dependencies"]["dev"]}, tests,
                                      allowed=tested) if not any(f"'{tool}'" in p for tool in TOOLS)]
    assert problems == []


def test_the_check_fails_on_a_dropped_and_on_an_unused_declaration():
    datasets = ROOT / "plugins" / "metareg-datasets"
    project = _project(datasets)
    dropped = dict(project, dependencies=[r for r in project["dependencies"] if not r.startswith("platformdirs")])
    assert any("imports 'platformdirs'" in p and "not declared" in p
               for p in mismatches(dropped, _packages(datasets)))
    unused = dict(project, dependencies=[*project["dependencies"], "pluggy>=1.7"])
    assert mismatches(unused, _packages(datasets)) == ["metareg-datasets: declares 'pluggy' but never imports it"]
    # An import the package gains without declaring it.
    strategies = ROOT / "plugins" / "metareg-strategies"
    gained = mismatches(_project(strategies), [*_packages(strategies), *_packages(datasets)])
    assert {"numpy", "platformdirs"} <= {re.search(r"imports '(\w+)'", p).group(1) for p in gained}


def _third_party(folder: Path) -> list[tuple[str, Requirement]]:
    return [(where, req) for where, req in _all_requirements(folder) if not req.name.startswith("metareg")]


@pytest.mark.parametrize("folder", [ROOT, *PLUGINS], ids=lambda p: p.name)
def test_every_requirement_has_a_lower_bound_that_the_tested_environment_satisfies(folder):
    untested = []
    for where, req in _third_party(folder):
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{where}: {req} has no lower bound"
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            untested.append(f"{where}: {req}")
            continue
        assert req.specifier.contains(installed, prereleases=True), (
            f"{where}: {req} excludes {req.name} {installed}, the version the tests run with")
    if untested:
        pytest.skip(f"not installed here, so these lower bounds went untested: {'; '.join(untested)}")


def test_the_metapackage_is_the_core_and_every_first_party_plugin():
    meta = _project(ROOT / "metapackage")
    assert meta["name"] == "metareg" and meta["version"] == metareg.__version__
    versions = {canonicalize_name(_project(f)["name"]): _project(f)["version"] for f in PLUGINS}
    versions["metareg-core"] = metareg.__version__
    # Plugins that pull a large library most runs never use are extras of their own (learn2learn, timm).
    members = {**requirements(meta), **requirements(meta, "learn2learn"), **requirements(meta, "timm")}
    assert set(members) == set(versions), "the metapackage must list the core and every plugin under plugins/"
    assert "metareg-learn2learn" not in requirements(meta), "learn2learn does not install from PyPI: keep it an extra"
    for name, req in members.items():
        assert req.specifier.contains(versions[name]), f"metareg requires {req}, but {name} is {versions[name]}"
    assert set(requirements(meta, "export")["metareg-core"].extras) == {"export"}


def test_the_core_version_is_written_once():
    # pyproject.toml reads it from metareg/__init__.py: the installed metadata and the module agree.
    assert "version" in _project(ROOT).get("dynamic", [])
    assert metadata.version("metareg-core") == metareg.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", metareg.__version__)


def test_the_environment_make_setup_builds_has_no_dependency_conflicts():
    # learn2learn's route (python -m metareg_learn2learn.install) pins numpy < 2 for qpth and installs
    # gsutil, which learn2learn declares; whatever needs numpy >= 2 must have been re-resolved with it.
    check = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
