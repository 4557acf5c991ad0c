"""Every config in examples/configs/ loads and validates through the CLI; the cheapest one trains."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metareg.cli import cli

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.yaml"))
TINY = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6", "--backbone-opt", "hidden=8",
        "--ways", "3", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2", "--epoch-length", "2",
        "--max-epochs", "1",
        "--test-num-tasks", "4", "--val-num-tasks", "2", "--eval-meta-batch-size", "4", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def test_there_is_a_config_per_first_party_strategy():
    strategies = {yaml.safe_load(p.read_text())["strategy"] for p in CONFIGS}
    assert {"prototypicalnetworks", "maml", "anil", "metaoptnet", "default"} <= strategies


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates(path):
    result = run("--config", str(path), "--print-config")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    written = yaml.safe_load(path.read_text())
    assert printed["strategy"] == written["strategy"]
    for key, value in written.get("strategy_options", {}).items():
        assert printed["strategy_options"][key] == value


@pytest.mark.parametrize("extra, message", [
    ("num_task: 10\n", "unknown setting 'num_task'"),  # the typo Flash dropped silently
    ("backbone_options:\n  hiden: 8\n", "unknown option 'hiden'"),  # component options are checked too
])
def test_a_broken_config_is_refused(tmp_path, extra, message):
    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIGS[0].read_text() + extra)
    result = CliRunner().invoke(cli, ["run", "--config", str(broken), "--print-config"])
    assert result.exit_code == 2
    assert message in result.output


def test_the_cheapest_config_trains(tmp_path):
    path = next(p for p in CONFIGS if p.stem == "prototypicalnetworks")
    result = run("--config", str(path), *TINY, "--output-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "3-way 1-shot:" in result.stdout
    assert (tmp_path / "run" / "summary.json").is_file()


def test_configuration_reference_is_current():
    from metareg.config import RunConfig
    from metareg.config_reference import render

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    regenerate = "python -m metareg.config_reference docs/configuration.md"
    assert doc == render(), f"docs/configuration.md is out of date: {regenerate}"
    assert all(f"| `{key}` |" in doc for key in RunConfig.keys())
