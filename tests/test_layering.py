"""The seams of the code, checked from the source: what may import what, and where tests live.

* Training and the checkpoint file format never reach the registry or plugin loading: a
  checkpoint is written during training, and rebuilding a model from one (which does need the
  registry) lives in ``model_loading.py`` beside ``build.py``, not in ``checkpoint.py``.
* Every first-party plugin keeps its own tests in ``plugins/<name>/tests/`` (as ``metareg
  new-plugin`` lays out a third party's), and ``make test`` (pytest's ``testpaths``) runs them.

(That plugins import only metareg's public API is tests/test_contracts.py's; that each
distribution imports only what it declares is tests/test_dependencies.py's.)
Each checker is also run on a deliberately broken input, which it must refuse.
"""
from __future__ import annotations

import ast
import glob
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module -> metareg modules it must not reach through any chain of imports, lazy ones inside functions included
MUST_NOT_REACH = {
    "metareg.checkpoint": {"metareg.registry", "metareg.plugins", "metareg.build", "metareg.model_loading"},
    "metareg.learner": {"metareg.registry", "metareg.plugins", "metareg.build", "metareg.model_loading"},
    "metareg.datamodule": {"metareg.registry", "metareg.plugins", "metareg.build", "metareg.model_loading"},
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_sources(root: Path = ROOT) -> dict[str, str]:
    return {_module_name(p, root): p.read_text() for p in sorted((root / "metareg").rglob("*.py"))}


def _imports(source: str, known: set[str]) -> set[str]:
    """The metareg modules ``source`` imports anywhere (``from a import b`` counts ``a`` and ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & known


def forbidden_paths(sources: dict[str, str], rules: dict[str, set[str]]) -> list[str]:
    """For each rule broken, the chain of imports that breaks it, e.g. ``a -> b -> c``."""
    graph = {name: _imports(text, set(sources)) - {name} for name, text in sources.items()}
    broken = []
    for start, forbidden in rules.items():
        came_from = {start: None}
        queue = [start]
        while queue:  # breadth first: the shortest chain is the one worth printing
            here = queue.pop(0)
            for nxt in sorted(graph.get(here, ())):
                if nxt in came_from:
                    continue
                came_from[nxt] = here
                queue.append(nxt)
                if nxt in forbidden:
                    chain, at = [], nxt
                    while at is not None:
                        chain.append(at)
                        at = came_from[at]
                    broken.append(" -> ".join(reversed(chain)))
    return broken


def test_training_and_the_checkpoint_format_never_reach_the_registry():
    sources = core_sources()
    assert set(MUST_NOT_REACH) <= set(sources), "a module named in MUST_NOT_REACH no longer exists"
    broken = forbidden_paths(sources, MUST_NOT_REACH)
    assert not broken, "imports across a seam (move the code to the side it belongs to):\n  " + "\n  ".join(broken)


def test_the_import_checker_finds_a_lazy_import_across_the_seam():
    sources = core_sources()
    # What checkpoint.py looked like before model rebuilding moved out: a lazy import inside a function.
    sources["metareg.checkpoint"] += "\n\ndef model_from_payload():\n    from metareg.build import build_model\n"
    broken = forbidden_paths(sources, MUST_NOT_REACH)
    assert "metareg.checkpoint -> metareg.build" in broken
    assert "metareg.learner -> metareg.checkpoint -> metareg.build" in broken


# ---------------------------------------------------------------- each plugin's tests, run by make test

def plugin_test_problems(root: Path) -> list[str]:
    """What keeps ``pytest`` (run at ``root`` with its configured testpaths) from running each plugin's tests."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    testpaths = config.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("testpaths", [])
    collected = {Path(p).resolve() for pattern in testpaths for p in glob.glob(str(root / pattern))}
    problems = []
    for project in sorted((root / "plugins").glob("*/pyproject.toml")):
        tests = project.parent / "tests"
        if not sorted(tests.glob("test_*.py")):
            problems.append(f"{project.parent.name} has no tests in {tests.relative_to(root)}/")
        elif tests.resolve() not in collected:
            problems.append(f"{tests.relative_to(root)} is not in pytest's testpaths {testpaths}")
    # Plugin test folders are not packages, so pytest imports their files by bare name: two alike collide.
    seen: dict[str, Path] = {}
    for folder in sorted(collected):
        for path in sorted(folder.rglob("test_*.py")):
            if "fixtures" in path.relative_to(folder).parts:
                continue
            other = seen.setdefault(path.name, path)
            if other != path:
                problems.append(f"{other.relative_to(root)} and {path.relative_to(root)} share a file name")
    return problems


def test_every_first_party_plugin_has_its_own_tests_and_make_test_runs_them():
    assert len(list((ROOT / "plugins").glob("*/pyproject.toml"))) >= 5
    assert plugin_test_problems(ROOT) == []


def _fake_repo(root: Path, testpaths: list[str], plugins: dict[str, list[str]]) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text(f"[tool.pytest.ini_options]\ntestpaths = {testpaths!r}\n".replace("'", '"'))
    (root / "tests").mkdir()
    (root / "tests" / "test_core.py").write_text("")
    for name, files in plugins.items():
        (root / "plugins" / name / "tests").mkdir(parents=True)
        (root / "plugins" / name / "pyproject.toml").write_text("")
        for f in files:
            (root / "plugins" / name / "tests" / f).write_text("")
    return root


@pytest.mark.parametrize("testpaths, plugins, needle", [
    (["tests"], {"metareg-a": ["test_a.py"]}, "plugins/metareg-a/tests is not in pytest's testpaths"),
    (["tests", "plugins/*/tests"], {"metareg-a": ["test_a.py"], "metareg-b": []}, "metareg-b has no tests"),
    (["tests", "plugins/*/tests"], {"metareg-a": ["test_core.py"]}, "share a file name"),
])
def test_the_plugin_tests_checker_refuses_a_broken_layout(tmp_path, testpaths, plugins, needle):
    good = _fake_repo(tmp_path / "good", ["tests", "plugins/*/tests"], {"metareg-a": ["test_a.py"]})
    assert plugin_test_problems(good) == []
    problems = plugin_test_problems(_fake_repo(tmp_path / "bad", testpaths, plugins))
    assert any(needle in p for p in problems), problems
