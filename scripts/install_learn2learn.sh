#!/usr/bin/env bash
# Install learn2learn 0.2.0 (for the metareg-learn2learn plugin) into a Python >= 3.11 environment.
#
#   scripts/install_learn2learn.sh [PYTHON]        (default: .venv/bin/python)
#
# Why a script: learn2learn's only sdist ships Cython-generated C files from 2020 that
# include longintrepr.h, which Python 3.11 removed, so `pip install learn2learn` fails to
# build. We regenerate the C files from the .pyx sources it also ships, with Cython < 3.1,
# and build without build isolation. Its dependency qpth pins numpy < 2, and
# `import learn2learn` needs gym and torchvision. gsutil (a listed dependency, only used by
# the Quickdraw download) is left out: install it yourself if you download Quickdraw.
#
# Idempotent: does nothing when `import learn2learn` already works. The built wheel is
# kept in .cache/learn2learn/ (override with L2L_CACHE), so a reinstall takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${1:-${PYTHON:-$ROOT/.venv/bin/python}}
# The build below runs in a temporary folder: make a relative path (.venv/bin/python) absolute.
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac
CACHE=${L2L_CACHE:-$ROOT/.cache/learn2learn}
VERSION=0.2.0
# Runtime dependencies of learn2learn 0.2.0 that `import learn2learn` and its vision
# datasets need (numpy < 2 because qpth requires it).
DEPS=("numpy>=1.24,<2" "gym>=0.26,<0.27" "qpth>=0.0.15" "scipy" "requests" "tqdm" "torchvision")

if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
    echo "install_learn2learn: no Python at $PY (create the environment first, e.g. make venv)" >&2
    exit 2
fi
if "$PY" -c "import learn2learn" >/dev/null 2>&1; then
    echo "learn2learn $("$PY" -c 'import learn2learn; print(learn2learn.__version__)' 2>/dev/null) is already installed for $PY"
    exit 0
fi

TAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
mkdir -p "$CACHE"
WHEEL=$(ls "$CACHE"/learn2learn-"$VERSION"-"$TAG"-*.whl 2>/dev/null | head -n 1 || true)

if [ -z "$WHEEL" ]; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    echo "==> downloading the learn2learn $VERSION sdist"
    # --no-binary learn2learn (not :all:): pip prepares metadata by running setup.py, and
    # :all: would make its setup_requires build Cython from source (minutes).
    "$PY" -m pip download -q --no-deps --no-binary learn2learn "learn2learn==$VERSION" -d "$WORK"
    tar xzf "$WORK/learn2learn-$VERSION.tar.gz" -C "$WORK"
    SRC="$WORK/learn2learn-$VERSION"
    rm -rf "$SRC/.eggs" # a stale Cython egg for Python 3.7 shipped inside the sdist
    echo "==> installing build tools (Cython < 3.1, setuptools, wheel, numpy < 2)"
    "$PY" -m pip install -q "Cython>=0.29.36,<3.1" "setuptools>=68" wheel "numpy>=1.24,<2"
    echo "==> regenerating the C sources from the .pyx files"
    (cd "$SRC" && "$PY" -m cython -3 --directive embedsignature=True learn2learn/data/*.pyx)
    echo "==> building the wheel (no build isolation)"
    "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$CACHE" "$SRC"
    WHEEL=$(ls "$CACHE"/learn2learn-"$VERSION"-"$TAG"-*.whl | head -n 1)
fi

echo "==> installing $(basename "$WHEEL") and its runtime dependencies"
"$PY" -m pip install -q --no-deps "$WHEEL"
"$PY" -m pip install -q "${DEPS[@]}"
"$PY" - <<'EOF'
import contextlib, io
with contextlib.redirect_stderr(io.StringIO()):  # gym prints a deprecation banner on import
    import learn2learn, numpy
print(f"learn2learn {learn2learn.__version__} installed (numpy {numpy.__version__})")
EOF
