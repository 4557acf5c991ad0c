"""Build the wheels of metareg's distributions: the core, the `metareg` metapackage, each first-party plugin.

    python scripts/build_dists.py [OUT]        (default: dist/; what `make dist` runs)

Offline: no build isolation and no index, so the running Python needs setuptools >= 68.
Each project is copied to a temporary folder first and built there. Built in place,
setuptools reuses build/lib/, and a module deleted since the last build would still
ship in the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def projects(root: Path = ROOT) -> list[Path]:
    """Every distribution's folder: the core (the repository root), the metapackage, the plugins."""
    return [root, root / "metapackage", *sorted(p.parent for p in (root / "plugins").glob("*/pyproject.toml"))]


def _copy_sources(project: Path, into: Path) -> Path:
    # pyproject.toml, the README it names, and the packages (metareg/, metareg_<name>/): tests, docs
    # and the virtual environment stay behind.
    into.mkdir(parents=True)
    for item in project.iterdir():
        if item.name in ("pyproject.toml", "README.md"):
            shutil.copy2(item, into / item.name)
        elif item.is_dir() and item.name.startswith("metareg") and (item / "__init__.py").is_file():
            shutil.copytree(item, into / item.name, ignore=SKIP)
    return into


def build(out: Path, python: str = sys.executable) -> list[Path]:
    """Build every wheel into ``out``; return their paths. Raises CalledProcessError on a failed build."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metareg-dist-") as tmp:
        copies = [_copy_sources(p, Path(tmp) / f"{i}-{p.name}") for i, p in enumerate(projects())]
        with tempfile.TemporaryDirectory(prefix="wheels-", dir=tmp) as wheels:
            subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "--no-index", "-w", wheels, *map(str, copies)], check=True)
            built = sorted(Path(wheels).glob("*.whl"))
            # Replace only the wheels of these distributions; anything else in OUT is left alone.
            for wheel in built:
                part = out / f".{wheel.name}.part"  # a wheel in OUT is whole or absent
                shutil.copy2(wheel, part)
                os.replace(part, out / wheel.name)
    return [out / w.name for w in built]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"
    for path in build(target):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
