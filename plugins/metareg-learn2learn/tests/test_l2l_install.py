"""`python -m metareg_learn2learn.install`: the route to learn2learn that ships with the plugin."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

from metareg_learn2learn import install


def test_the_install_command_runs_from_outside_the_repository(tmp_path):
    result = subprocess.run([sys.executable, "-m", "metareg_learn2learn.install", "--help"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "learn2learn 0.2.0" in result.stdout and "--cache" in result.stdout


def test_the_missing_learn2learn_hint_names_that_command():
    assert f"`{install.COMMAND}`" in install.INSTALL_HINT
    module = install.COMMAND.removeprefix("python -m ")
    assert importlib.util.find_spec(module) is not None and module == install.__name__


def test_what_needs_numpy2_is_re_resolved_beside_numpy_below_2():
    installed = {
        # as ml_dtypes 0.6.0 and onnx 1.23.2 declare them
        "ml_dtypes": ["numpy>=2.0.0", 'numpy>=2.1.0; python_version >= "3.13"', 'absl-py; extra == "dev"'],
        "onnx": ["numpy>=1.23.2", "protobuf>=6.31.1", "ml_dtypes>=0.5.4"],
        "spaced": ["numpy >= 2.1", "scipy"],
        "capped": ["numpy<3,>=2"],
        "qpth": ["numpy<2,>=1", "cvxpy>=1.1.0"],
        "only-for-an-extra": ['numpy>=2; extra == "fast"'],
        "numpyro": ["numpyro-extras>=2"],
        "nothing": [],
    }
    assert install.needing_numpy2(installed) == ["capped", "ml_dtypes", "spaced"]
    assert "gsutil" in install.REQUIREMENTS and "numpy>=1.26,<2" in install.REQUIREMENTS
