"""docs/writing-plugins.md: every shell command in it runs, in order, as a reader would type it.

Commands are the `$ ` lines of its ```console and ```bash blocks. A trailing comment
containing "fails" means the command must exit non-zero. EXPECT lists text that must
appear in a command's output. Only `twine upload` (mentioned in prose, not in a block)
is not run: it would publish to PyPI.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-plugins.md"

EXPECT = {
    "metareg new-plugin shapes": ["Created", "metareg-shapes"],
    "metareg new-plugin shapes   # fails: metareg-shapes already exists": ["already exists; refusing to overwrite"],
    "metareg list shapes-*": [
        "shapes-cnn", "shapes-patterns", "shapes-jitter", "shapes-cosine", "metareg-shapes 0.1.0"
    ],
    "metareg list --plugins shapes": ["metareg_shapes.plugin", "ok"],
    "pytest -q metareg-shapes/tests": ["6 passed"],
    "metareg list": [
        "broken plugins", "shapes (metareg-shapes 0.1.0): failed at import", "demo: a dependency is missing"
    ],
    "metareg list -v": ["Traceback", "ImportError: demo: a dependency is missing"],
    "metareg --strict list   # fails, naming metareg-shapes": ["metareg-shapes", "demo: a dependency is missing"],
    "METAREG_STRICT=1 metareg list   # fails the same way": ["metareg-shapes"],
    "metareg --load-plugins shapes list   # only the (broken) shapes plugin": ["(none)", "broken plugins"],
    "METAREG_PLUGINS=backbones metareg --strict list backbones": ["conv4"],
    "metareg --load-plugins shapes --strict list": ["shapes-cnn"],
}


def doc_commands(text: str) -> list[str]:
    commands, in_shell = [], False
    for line in text.splitlines():
        fence = re.match(r"^```(\w*)", line)
        if fence:
            in_shell = not in_shell and fence.group(1) in ("console", "bash")
            continue
        if in_shell and line.startswith("$ "):
            commands.append(line[2:].strip())
    return commands


def test_doc_has_the_sections_the_issue_asks_for():
    text = DOC.read_text()
    for needle in ("metareg new-plugin", "**`name`**", "**`factory`**", "**`summary`**", "**`aliases`**",
                   "metareg info", "metareg.testing", "PyPI", "metareg-<thing>", "METAREG_STRICT", "--strict",
                   "METAREG_DISABLE_PLUGINS", "--disable-plugins", "METAREG_PLUGINS", "--load-plugins",
                   "metareg list -v"):
        assert needle in text, f"docs/writing-plugins.md does not mention {needle}"
    assert set(EXPECT) <= set(doc_commands(text)), "EXPECT names a command that is no longer in the doc"


def test_python_snippets_compile():
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)):
        compile(block, f"writing-plugins.md python block {i}", "exec")


@pytest.mark.slow
def test_every_command_in_the_plugin_guide_runs(tmp_path):
    commands = doc_commands(DOC.read_text())
    assert len(commands) >= 20
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAREG_") or k == "METAREG_CACHE_DIR"}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        for cmd in commands:
            result = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
            output = result.stdout + result.stderr
            comment = cmd.partition("#")[2]
            if "fails" in comment:
                assert result.returncode != 0, f"`{cmd}` should fail but exited 0:\n{output[-2000:]}"
            else:
                assert result.returncode == 0, f"`{cmd}` exited {result.returncode}:\n{output[-3000:]}"
            for needle in EXPECT.get(cmd, ()):
                assert needle in output, f"`{cmd}`: {needle!r} not in its output:\n{output[-3000:]}"
            if cmd.startswith("metareg info backbone") and "width: int = 48" in (
                tmp_path / "metareg-shapes" / "metareg_shapes" / "backbones.py"
            ).read_text():
                assert re.search(r"width\s+int\s+48", output), output
        assert (tmp_path / "scratch" / "metareg-just-a-strategy" / "metareg_just_a_strategy" / "strategies.py").exists()
        (wheel,) = (tmp_path / "dist").glob("metareg_shapes-0.1.0-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            entry_points = zf.read("metareg_shapes-0.1.0.dist-info/entry_points.txt").decode()
        assert "[metareg]\nshapes = metareg_shapes.plugin" in entry_points
    finally:
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "-y", "-q", "metareg-shapes"], capture_output=True, env=env
        )
