"""Rules of the house for the whole package: no module in metareg/ over 400 lines.

A long module is several ideas in one file; split it along its seams (CONTRIBUTING.md,
"Where things live"). Every module is one test case, so a new module is covered without
editing this file.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metareg"
LIMIT = 400
# Modules over the limit while they are being split, as ROOT/metareg-relative paths. The mark is
# strict: once a module is split, its entry must go.
STILL_OVER: set[str] = set()


def over_limit(paths: list[Path], limit: int = LIMIT) -> list[str]:
    """``"name: N lines"`` for each file longer than ``limit`` lines."""
    found = []
    for path in paths:
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{path.name}: {n} lines")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def _case(path: Path):
    rel = path.relative_to(PACKAGE).as_posix()
    marks = [pytest.mark.xfail(strict=True, reason=f"{rel} is being split")] if rel in STILL_OVER else []
    return pytest.param(path, id=rel, marks=marks)


@pytest.mark.parametrize("path", [_case(p) for p in MODULES])
def test_module_is_at_most_400_lines(path):
    assert not over_limit([path]), f"metareg/{path.relative_to(PACKAGE).as_posix()} is over {LIMIT} lines: " \
                                   "split it along its seams, one idea per file"


def test_every_module_is_a_case():
    # A glob that finds nothing would make the rule pass for want of modules.
    names = {p.relative_to(PACKAGE).as_posix() for p in MODULES}
    assert {"kinds.py", "records.py", "cli/app.py", "testing/__init__.py"} <= names
    assert not STILL_OVER - names, f"STILL_OVER names modules that do not exist: {STILL_OVER - names}"


def test_the_rule_catches_a_module_one_line_too_long(tmp_path):
    long, short = tmp_path / "long.py", tmp_path / "short.py"
    long.write_text("x = 1\n" * (LIMIT + 1))
    short.write_text("x = 1\n" * LIMIT)
    assert over_limit([long, short]) == [f"long.py: {LIMIT + 1} lines"]
    # And on a real module, with the limit lowered below its length.
    kinds = PACKAGE / "kinds.py"
    assert over_limit([kinds], limit=10) == [f"kinds.py: {len(kinds.read_text().splitlines())} lines"]
