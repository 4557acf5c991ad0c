"""Recipes through the CLI: every shipped recipe validates and trains (on synthetic images of its shape),
settings layer recipe < config file < command line, bad names and broken recipe files are refused.

Parametrized over :func:`metareg.recipes.names`, so a new recipe file is covered without editing this file.
"""
from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from metareg import recipes
from metareg.cli import cli

NAMES = recipes.names()


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_the_papers_the_issue_asks_for_are_shipped():
    papers = {r.paper.split(",")[0] for r in recipes.load_all()}
    assert {"Snell", "Finn", "Lee", "Tian"} <= papers
    assert {f"protonet-omniglot-{p}" for p in ("5w1s", "5w5s", "20w1s", "20w5s")} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_against_runconfig_and_the_registry(name):
    """`run --recipe NAME --print-config`: every setting, component and option checked as a run would."""
    result = invoke("run", "--recipe", name, "--print-config")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    recipe = recipes.find(name)
    for key, value in recipe.settings.items():
        if isinstance(value, dict):  # component options: the recipe's, plus the component's defaults
            assert {k: printed[key][k] for k in value} == value, key
        else:
            assert printed[key] == value, key
    p = recipe.protocol
    assert (printed["test_ways"], printed["test_shots"], printed["test_queries"], printed["test_num_tasks"]) == (
        p["ways"], p["shots"], p["queries"], p["episodes"])
    assert recipe.deviations is not None and recipe.sources


def _corrupt(tmp_path, monkeypatch, name: str, old: str, new: str):
    """A copy of the shipped recipes in which ``name``'s file has ``old`` replaced by ``new``."""
    folder = tmp_path / "recipes"
    shutil.copytree(Path(str(resources.files("metareg.recipes"))), folder,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = folder / f"{name}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    monkeypatch.setattr("metareg.recipes.recipe._folder", lambda: folder)


@pytest.mark.parametrize("old, new, message", [
    ("test_num_tasks: 1000", "test_num_task: 1000", "unknown setting 'test_num_task'. Did you mean 'test_num_tasks'?"),
    ("  published:", "  publshed:", "unknown key 'publshed' in recipe (did you mean 'published'?)"),
    ("hidden: 64,", "hiden: 64,", "unknown option 'hiden'"),  # a component option: checked by the registry
    ("episodes: 1000}", "episodes: 600}", "recipe.protocol.episodes is 600 but the settings give test_num_tasks: 1000"),
    ("lr: 0.001", "lr: 20", "lr must be"),
])
def test_the_validation_fails_on_a_corrupted_recipe(tmp_path, monkeypatch, old, new, message):
    """The check above, run on a recipe file with one mistake: refused in one line, exit 2."""
    _corrupt(tmp_path, monkeypatch, "protonet-omniglot-5w1s", old, new)
    result = invoke("run", "--recipe", "protonet-omniglot-5w1s", "--print-config")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize("args", [["run", "--recipe", "protonet-omniglt-5w1s"], ["reproduce", "protonet-omniglt-5w1s"],
                                  ["recipes", "protonet-omniglt-5w1s"]], ids=["run", "reproduce", "recipes"])
def test_an_unknown_recipe_name_is_refused_with_close_matches(args, tmp_path):
    result = invoke(*args, "--output-dir", str(tmp_path / "out")) if args[0] != "recipes" else invoke(*args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "no recipe named 'protonet-omniglt-5w1s'. Did you mean protonet-omniglot-5w1s" in result.output
    assert not (tmp_path / "out").exists()


def test_settings_layer_recipe_then_config_file_then_command_line(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("lr: 0.01\nseed: 3\nbackbone_options: {hidden: 32}\n")
    result = invoke("run", "--recipe", "protonet-omniglot-5w1s", "--config", str(config), "--seed", "4",
                    "--print-config")
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert (printed["lr"], printed["seed"], printed["ways"]) == (0.01, 4, 60)  # file over recipe, CLI over file
    assert printed["backbone_options"]["hidden"] == 32 and printed["backbone_options"]["pooled"] is False
    # Another dataset: the recipe's omniglot options (split, rotations) belonged to omniglot and are dropped.
    result = invoke("run", "--recipe", "protonet-omniglot-5w1s", "--dataset", "glyphs", "--print-config")
    assert result.exit_code == 0, result.output
    assert "split" not in yaml.safe_load(result.stdout)["dataset_options"]


def test_the_listing_says_where_each_recipes_data_is(tmp_path):
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(b"")
    result = invoke("recipes", "--data-root", str(tmp_path))
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip() and " et al. " in line}
    assert set(rows) == set(NAMES)
    for name, line in rows.items():
        expected = "here" if recipes.find(name).dataset == "omniglot" else "not found"
        assert line.rstrip().endswith(expected), line
    assert re.search(r"protonet-omniglot-5w1s\s+Snell et al\. 2017\s+Table 1 .*98\.80 %\s+here", result.stdout)
    listed = json.loads(invoke("recipes", "--json", "--data-root", str(tmp_path / "nothing")).stdout)
    assert {r["name"] for r in listed["recipes"]} == set(NAMES)
    assert all(r["data"] is None for r in listed["recipes"])


def test_reproduce_refuses_a_data_root_without_the_recipes_data(tmp_path):
    result = invoke("reproduce", "protonet-omniglot-5w1s", "--data-root", str(tmp_path), "--output-dir",
                    str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "is not under --data-root" in result.output and "omniglot/images_background.zip" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mean, ci, published, inside", [
    (98.0, 1.0, 98.8, True), (98.0, 0.5, 98.8, False), (50.0, 1.0, 49.0, True), (50.0, 0.9, 48.9, False),
])
def test_the_verdict_is_the_published_value_inside_the_runs_interval(mean, ci, published, inside):
    got, text = recipes.verdict(mean, ci, published)
    assert got is inside
    assert text.startswith("reproduced" if inside else "not reproduced")


def _image_folder(root: Path, recipe, classes: dict[str, int], per_class: int) -> Path:
    """Random images of the recipe's shape in train/val/test class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    mode = "L" if recipe.channels == 1 else "RGB"
    shape = (recipe.image_size, recipe.image_size) + (() if recipe.channels == 1 else (3,))
    for split, count in classes.items():
        for c in range(count):
            folder = root / split / f"{split}{c:03d}"
            folder.mkdir(parents=True)
            base = rng.integers(0, 256, shape)
            for i in range(per_class):
                noise = rng.integers(-20, 21, shape)
                Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), mode).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_trains_on_synthetic_images_of_its_shape(name, tmp_path):
    """`metareg reproduce NAME` with the dataset swapped for images of the recipe's channels and size, the
    recipe's episode ways and shots, its components and options, and a budget of one step."""
    recipe = recipes.find(name)
    config = recipe.config()
    per_class = max(config.shots, config.test_shots) + 1  # shots + one query
    data = _image_folder(tmp_path / "data", recipe, {"train": config.ways, "val": config.test_ways,
                                                      "test": config.test_ways}, per_class)
    out = tmp_path / "run"
    result = invoke("reproduce", name, "--dataset", "imagefolder", "--dataset-opt", f"root={data}",
                    "--dataset-opt", f"channels={recipe.channels}", "--dataset-opt", f"image_size={recipe.image_size}",
                    "--queries", "1", "--test-queries", "1", "--meta-batch-size", "1", "--epoch-length", "1",
                    "--max-epochs", "1", "--max-steps", "-1", "--test-num-tasks", "2", "--val-num-tasks", "1",
                    "--eval-meta-batch-size", "1", "--no-progress", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert re.search(rf"^paper: +{re.escape(recipe.published)}", result.stdout, re.M)
    assert re.search(r"^verdict: (not )?reproduced: the published", result.stdout, re.M)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for kind in ("backbone", "transform", "strategy"):  # the recipe's components ran, with its options
        assert saved[kind] == recipe.settings[kind]
        mine = recipe.settings.get(f"{kind}_options", {})
        assert {k: saved[f"{kind}_options"][k] for k in mine} == mine
    assert (saved["ways"], saved["shots"], saved["test_ways"], saved["test_shots"]) == (
        config.ways, config.shots, config.test_ways, config.test_shots)
    record = json.loads((out / "reproduction.json").read_text())
    assert record["recipe"] == name and record["changed"]["dataset"] == {"run": "imagefolder",
                                                                         "recipe": recipe.dataset}


# Measured on images_background.zip (vinyals split of its 964 characters, rotations) with this command at seeds
# 0, 1, 2: 68.96 ± 2.90, 70.80 ± 3.09, 65.65 ± 3.12 % (seed 0 is what runs here); the range allows the seed
# spread and the CI.
@pytest.mark.slow
@pytest.mark.omniglot
def test_protonet_omniglot_recipe_on_real_omniglot_at_a_small_budget(omniglot_zip, tmp_path):
    result = invoke("reproduce", "protonet-omniglot-5w1s", "--data-root", str(omniglot_zip.parent.parent),
                    "--max-epochs", "1", "--epoch-length", "10", "--val-num-tasks", "10", "--test-num-tasks", "50",
                    "--no-progress", "--output-dir", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "reproduction.json").read_text())
    assert 60.0 <= record["run"]["accuracy"] <= 80.0, record["run"]
    assert record["run"]["episodes"] == 50 and record["protocol"] == {"ways": 5, "shots": 1, "queries": 15,
                                                                      "episodes": 1000}
    assert "changed from the recipe: epoch_length=10 (recipe: 100)" in result.stdout
