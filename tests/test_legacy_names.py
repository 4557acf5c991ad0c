"""Flash / learn2learn names through `metareg run --print-config`: mapped, noted once, misspellings still refused."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from metareg import legacy_names
from metareg.cli import cli
from metareg.legacy_names import NAMES

# A strategy that has each old option's new name, and a value for it.
CASES = {
    "distance_metric": ("prototypicalnetworks", "cosine"),
    "svm_C_reg": ("metaoptnet", 0.5),
    "svm_max_iters": ("metaoptnet", 7),
    "scheduler_step": (None, 3),
    "scheduler_decay": (None, 0.25),
    "train_ways": (None, 3),
    "train_shots": (None, 2),
    "train_queries": (None, 4),
    "num_task": (None, 50),
    "test_num_task": (None, 30),
}


def print_config(tmp_path, settings: dict, *args):
    path = tmp_path / "legacy.yaml"
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(cli, ["run", "--config", str(path), "--print-config", *args])
    result.returncode = result.exit_code
    return result


@pytest.fixture(autouse=True)
def fresh_notes():
    # Notes are printed once per process; each test is a fresh "process" for them.
    legacy_names._noted.clear()


def test_every_legacy_name_is_tested():
    assert {n.old for n in NAMES} == set(CASES)


@pytest.mark.parametrize("legacy", NAMES, ids=[n.old for n in NAMES])
def test_old_name_maps_with_one_note(tmp_path, legacy):
    strategy, value = CASES[legacy.old]
    if legacy.where == "option":
        settings = {"strategy": strategy, "strategy_options": {legacy.old: value}}
    elif legacy.where == "flash section":
        settings = {"training_strategy_kwargs": {legacy.old: value}}
    else:
        settings = {"scheduler": "step", legacy.old: value}
    result = print_config(tmp_path, settings)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    section = printed["strategy_options"] if legacy.where == "option" else printed
    assert section[legacy.new] == value and legacy.old not in section
    note = f"note: {legacy.old!r} is {legacy.source}'s name; metareg calls it {legacy.new!r}"
    assert result.stderr.count(note) == 1, result.stderr


def test_option_alias_on_the_command_line(tmp_path):
    result = print_config(tmp_path, {"strategy": "protonet"}, "--strategy-opt", "distance_metric=cosine")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["strategy_options"]["distance"] == "cosine"
    assert "metareg calls it 'distance'" in result.stderr


def test_flash_training_strategy_kwargs(tmp_path):
    flash = {"strategy": "metaoptnet", "training_strategy_kwargs": {
        "ways": 3, "shots": 2, "queries": 1, "meta_batch_size": 4, "num_tasks": 50, "epoch_length": 9,
        "test_ways": 4, "test_shots": 3, "test_queries": 2, "test_num_tasks": 30, "seed": 42, "svm_C_reg": 0.5}}
    result = print_config(tmp_path, flash)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    for key, value in flash["training_strategy_kwargs"].items():
        if key != "svm_C_reg":
            assert printed[key] == value, key
    assert printed["strategy_options"]["svm_c"] == 0.5
    assert "'training_strategy_kwargs' is Flash's section" in result.stderr
    assert "metareg calls it 'svm_c'" in result.stderr


def test_flash_section_with_a_misspelt_key_is_refused(tmp_path):
    result = print_config(tmp_path, {"training_strategy_kwargs": {"wayz": 3}})
    assert result.returncode == 2
    assert "unknown option 'wayz'" in result.stderr


def test_flash_section_and_top_level_both_setting_a_key_is_refused(tmp_path):
    result = print_config(tmp_path, {"ways": 5, "training_strategy_kwargs": {"ways": 3}})
    assert result.returncode == 2
    assert "'ways' is given both in training_strategy_kwargs and at the top level" in result.stderr


@pytest.mark.parametrize("settings, message", [
    ({"strategy_options": {"distance_metrc": "cosine"}}, "unknown option 'distance_metrc'"),
    ({"scheduler_stepp": 3}, "unknown setting 'scheduler_stepp'"),
    # Flash's singular spelling is taken only inside its own section
    ({"num_task": 3}, "unknown setting 'num_task'"),
    # an old name for an option the strategy does not have is not silently taken
    ({"strategy": "maml", "strategy_options": {"distance_metric": "cosine"}}, "unknown option 'distance_metric'"),
    ({"strategy_options": {"distance_metric": "cosine", "distance": "euclidean"}}, "keep only 'distance'"),
    ({"scheduler_step": 3, "step_size": 4}, "keep only 'step_size'"),
])
def test_misspelt_or_conflicting_names_are_refused(tmp_path, settings, message):
    result = print_config(tmp_path, settings)
    assert result.returncode == 2
    assert message in result.stderr and "Error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_real_option_wins_over_an_alias():
    def factory(distance_metric: str = "x", distance: str = "y"):
        """distance_metric: a real option of this factory."""

    from metareg.options import bind
    assert bind(factory, {"distance_metric": "z"}, component="test") == {"distance_metric": "z"}


def test_note_is_printed_once(capsys):
    for _ in range(3):
        legacy_names.rename({"svm_max_iters": 3}, {"svm_iterations"}, legacy_names.OPTIONS, "t", ValueError)
    assert capsys.readouterr().err.count("'svm_max_iters'") == 1


DOC = Path(__file__).parent.parent / "docs" / "migrating.md"


def test_every_legacy_name_is_in_the_migration_guide():
    rows = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\S+) \|", DOC.read_text(), re.M))
    assert {(n.old, n.new, n.source) for n in NAMES} <= rows


def test_the_guides_flash_config_runs_as_it_is(tmp_path):
    block = re.search(r"```yaml\n# a Flash-style config[^\n]*\n(.*?)```", DOC.read_text(), re.S).group(1)
    result = print_config(tmp_path, yaml.safe_load(block))
    assert result.returncode == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert (printed["queries"], printed["num_tasks"], printed["strategy_options"]["adaptation_lr"]) == (1, 200, 0.1)
