"""Fixtures for every test folder: the core's tests/ and each first-party plugin's plugins/<name>/tests/.

At the repository root so that one set of rules (a fresh plugin set, no leaked METAREG_* switches,
the test cache dir, the shared Omniglot location) holds for the plugins' tests as for the core's.
Each test starts with a fresh plugin set.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
# ../shared beside the clone (CI lays a copy there); METAREG_SHARED overrides.
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
OMNIGLOT_ZIP = SHARED / "data" / "omniglot" / "images_background.zip"

# Generated datasets (glyphs) are cached here between test runs instead of the user's cache.
os.environ.setdefault("METAREG_CACHE_DIR", str(ROOT / ".cache" / "metareg"))


@pytest.fixture
def omniglot_zip() -> Path:
    if not OMNIGLOT_ZIP.is_file():
        pytest.skip(f"real Omniglot not found at {OMNIGLOT_ZIP} (set METAREG_SHARED to the shared/ folder)")
    return OMNIGLOT_ZIP


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Forget the process-wide plugin set before and after every test."""
    from metareg.plugins import set_plugins

    set_plugins(None)
    yield
    set_plugins(None)


# Switches the CLI exports for the processes Lightning launches (metareg/cli, run.py). In-process CliRunner
# calls would leave them set for every later test; each test starts and ends without them.
_SWITCHES = ("METAREG_STRICT", "METAREG_PLUGINS", "METAREG_DISABLE_PLUGINS", "METAREG_RUN_DIR",
             "METAREG_VERBOSE")


@pytest.fixture(autouse=True)
def no_leaked_switches():
    saved = {k: os.environ.pop(k) for k in _SWITCHES if k in os.environ}
    yield
    for k in _SWITCHES:
        os.environ.pop(k, None)
    os.environ.update(saved)
