"""Build and install learn2learn 0.2.0 into this Python environment (Python >= 3.11).

    python -m metareg_learn2learn.install [--cache DIR]

Why a command: learn2learn's only sdist ships Cython-generated C files from 2020 that
include longintrepr.h, which Python 3.11 removed, so `pip install learn2learn` fails to
build. This regenerates the C files from the .pyx sources the sdist also ships (Cython < 3.1)
and builds a wheel without build isolation, leaving out the sdist's top-level `tests`
package, which would shadow any project's own `tests` in site-packages. Then it installs
learn2learn's requirements: numpy < 2, because qpth requires it, and gsutil (used only by the
Quickdraw download, but declared). Packages already installed that need numpy >= 2 (ml_dtypes
0.6 through onnx, say) are re-resolved with them, so `pip check` stays clean.

Needs the package index (the sdist and build tools). The wheel is kept in the cache
folder, so a reinstall is offline and takes seconds. Does not rebuild when learn2learn
0.2.0 already imports; the requirements are checked every time.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

VERSION = "0.2.0"
COMMAND = "python -m metareg_learn2learn.install"
# What a user reads when learn2learn is missing: the one way to get it, from any environment.
INSTALL_HINT = f"run `{COMMAND}` (learn2learn's sdist needs rebuilding on Python 3.11+)"
BUILD_TOOLS = ("Cython>=0.29.36,<3.1", "setuptools>=68", "wheel", "numpy>=1.26,<2")
# learn2learn 0.2.0's own requirements, with numpy held below 2 for qpth.
REQUIREMENTS = ("numpy>=1.26,<2", "gym>=0.26,<0.27", "qpth>=0.0.15", "scipy", "requests", "tqdm", "torchvision",
                "gsutil")
# "numpy>=2", "numpy >= 2.1.0", "numpy<3,>=2.0": a lower bound of 2 or more (markers are not evaluated:
# naming one package too many only costs the resolver a look).
_NUMPY2 = re.compile(r"^numpy(?![\w.-])\s*(\[[^]]*\])?\s*[^;]*>=?\s*[2-9]")


def default_cache() -> Path:
    base = os.environ.get("METAREG_CACHE_DIR")
    if base:
        return Path(base) / "learn2learn" / "wheels"
    import platformdirs

    return Path(platformdirs.user_cache_dir("metareg")) / "learn2learn" / "wheels"


def _pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, check=not capture, capture_output=capture, text=True)


def _importable() -> str | None:
    """learn2learn's version when ``import learn2learn`` works in this environment (a fresh process)."""
    probe = "import contextlib, io\nwith contextlib.redirect_stderr(io.StringIO()):\n import learn2learn\n" \
            "print(learn2learn.__version__)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def needing_numpy2(installed: dict[str, list[str]]) -> list[str]:
    """Of ``{distribution: its requirement strings}``, those that require numpy >= 2 (outside extras)."""
    return sorted(name for name, reqs in installed.items()
                  if any(_NUMPY2.match(r) and "extra ==" not in r for r in reqs))


def _installed() -> dict[str, list[str]]:
    return {d.metadata["Name"]: d.requires or [] for d in metadata.distributions()}


def build_wheel(cache: Path) -> Path:
    """The learn2learn wheel for this Python, from the cache or built from the sdist into it."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    cached = sorted(cache.glob(f"learn2learn-{VERSION}-{tag}-*.whl"))
    if cached:
        return cached[0]
    with tempfile.TemporaryDirectory(prefix="metareg-l2l-") as tmp:
        work = Path(tmp)
        print(f"==> downloading the learn2learn {VERSION} sdist")
        # --no-binary learn2learn (not :all:): pip prepares metadata by running setup.py, and :all:
        # would make its setup_requires build Cython from source (minutes).
        _pip("download", "-q", "--no-deps", "--no-binary", "learn2learn", f"learn2learn=={VERSION}", "-d", str(work))
        with tarfile.open(work / f"learn2learn-{VERSION}.tar.gz") as sdist:
            sdist.extractall(work, filter="data")
        src = work / f"learn2learn-{VERSION}"
        shutil.rmtree(src / ".eggs", ignore_errors=True)  # a stale Cython egg for Python 3.7
        setup = src / "setup.py"
        setup.write_text(setup.read_text().replace(
            "packages=find_packages(),", "packages=find_packages(exclude=['tests', 'tests.*']),"))
        print("==> installing the build tools (Cython < 3.1, setuptools, wheel, numpy < 2)")
        _pip("install", "-q", *BUILD_TOOLS)
        print("==> regenerating the C sources from the .pyx files")
        pyx = sorted(str(p.relative_to(src)) for p in (src / "learn2learn" / "data").glob("*.pyx"))
        subprocess.run([sys.executable, "-m", "cython", "-3", "--directive", "embedsignature=True", *pyx],
                       cwd=src, check=True)
        print("==> building the wheel (no build isolation)")
        out = work / "wheel"
        _pip("wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(out), str(src))
        (built,) = out.glob("learn2learn-*.whl")
        cache.mkdir(parents=True, exist_ok=True)
        part = cache / f".{built.name}.part"  # the cache holds whole wheels only
        shutil.copy2(built, part)
        os.replace(part, cache / built.name)
        return cache / built.name


def install(cache: Path) -> None:
    version = _importable()
    if version == VERSION:
        print(f"learn2learn {version} is already installed for {sys.executable}")
    else:
        wheel = build_wheel(cache)
        print(f"==> installing {wheel.name}")
        _pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))
    conflicts = needing_numpy2(_installed())
    print(f"==> learn2learn's requirements (numpy < 2 for qpth, gsutil){', re-resolving ' if conflicts else ''}"
          f"{', '.join(conflicts)}")
    # Named beside numpy < 2, pip picks versions of them that accept it (ml_dtypes 0.5 for onnx).
    _pip("install", "-q", *REQUIREMENTS, *conflicts)
    check = _pip("check", capture=True)
    if check.returncode:
        print(f"pip check still reports:\n{check.stdout.strip()}", file=sys.stderr)
    version = _importable()
    if version != VERSION:
        raise SystemExit(f"learn2learn does not import after installing it (got {version!r}); see the output above")
    print(f"learn2learn {version} installed for {sys.executable}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the built wheel (default: $METAREG_CACHE_DIR/learn2learn/wheels, "
                             "else the user cache directory)")
    args = parser.parse_args(argv)
    install((args.cache or default_cache()).expanduser().resolve())


if __name__ == "__main__":
    main()
