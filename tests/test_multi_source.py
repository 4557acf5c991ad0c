"""Several sources in one run (`--dataset A --dataset B`), per-source results, and the cross-domain protocol
(`metareg eval RUN --dataset X` of a model trained on other data), through the CLI on tiny data."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from metareg.cli import cli

SIDE = 14
GLYPHS = ["image_size=14", "samples_per_class=6"]
SHAPE = ["--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2",
         "--epoch-length", "4", "--max-epochs", "1", "--test-num-tasks", "6", "--val-num-tasks", "4",
         "--eval-meta-batch-size", "3", "--backbone-opt", "hidden=8", "--no-progress"]
SOURCE_LINE = re.compile(r"^  (\w+): (\d+\.\d) ± (\d+\.\d) % \(95% CI, (\d+) test episodes\)$", re.M)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A second source: an image folder of 15 classes x 6 grey 14 px images (a pattern per class, noisy copies)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    gen = torch.Generator().manual_seed(0)
    for c in range(15):
        pattern = torch.rand(SIDE, SIDE, generator=gen) * 255
        (root / f"class{c}").mkdir()
        for i in range(6):
            pixels = (pattern + torch.randn(SIDE, SIDE, generator=gen) * 30).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy(), mode="L").save(root / f"class{c}" / f"{i}.png")
    return root


def folder_options(root: Path, qualified: bool) -> list[str]:
    prefix = "imagefolder." if qualified else ""
    return [f"{prefix}{o}" for o in (f"root={root}", "image_size=14", "channels=1")]


def two_sources(root: Path) -> list[str]:
    options = [f"glyphs.{o}" for o in GLYPHS] + folder_options(root, qualified=True)
    return ["--dataset", "glyphs", "--dataset", "imagefolder", *[a for o in options for a in ("--dataset-opt", o)]]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def multi(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "multi"
    result = invoke("run", *two_sources(folder), *SHAPE, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_run_on_two_sources_reports_each_source_and_their_mean(multi):
    out, output = multi
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "glyphs+imagefolder"
    per_source = summary["sources"]
    assert list(per_source) == ["glyphs", "imagefolder"] and summary["episodes"] == 12
    # The printed summary: the mean over sources, then one line per source with what summary.json holds.
    head = r"^3-way 1-shot: \d+\.\d ± \d+\.\d % \(95% CI, mean over 2 sources, 12 test episodes\)$"
    assert re.search(head, output, re.M)
    printed = {m.group(1): m for m in SOURCE_LINE.finditer(output)}
    assert set(printed) == set(per_source)
    table = rows(out / "test_episodes.csv")
    assert list(table[0]) == ["source", "episode", "accuracy"]
    for name, reported in per_source.items():
        mine = [float(r["accuracy"]) for r in table if r["source"] == name]
        assert [int(r["episode"]) for r in table if r["source"] == name] == list(range(6))
        assert reported["episodes"] == 6 and abs(sum(mine) / 6 - reported["accuracy"]) < 1e-6
        assert printed[name].group(2) == f"{100 * reported['accuracy']:.1f}"
    means = [s["accuracy"] for s in per_source.values()]
    assert abs(summary["accuracy"] - sum(means) / 2) < 1e-9
    assert abs(summary["ci95"] - math.sqrt(sum(s["ci95"] ** 2 for s in per_source.values())) / 2) < 1e-9
    # Each source as it ran, with its weight; the flat, qualified options are what `metareg table` groups by.
    dataset = summary["components"]["dataset"]
    assert [(s["name"], s["weight"]) for s in dataset["sources"]] == [("glyphs", 1.0), ("imagefolder", 1.0)]
    assert dataset["options"]["glyphs.samples_per_class"] == 6 and dataset["options"]["imagefolder.channels"] == 1
    header = rows(out / "metrics.csv")[0].keys()
    assert {"val_acc", "val_acc_glyphs", "val_acc_imagefolder"} <= set(header)
    table_result = invoke("table", str(out))
    assert table_result.exit_code == 0, table_result.output
    assert "glyphs+imagefolder" in table_result.output or "prototypicalnetworks" in table_result.output


def test_each_source_is_tested_on_the_episodes_it_has_alone(multi, tmp_path):
    """`metareg eval RUN --dataset glyphs` of the two-source model: the saved glyphs options are kept, and the
    episodes and accuracies are the glyphs rows of the run's own test (episode j of a source is its own j)."""
    out, _ = multi
    ckpt = out / json.loads((out / "summary.json").read_text())["best_checkpoint"]
    result = invoke("eval", str(ckpt), "--dataset", "glyphs", "--test-queries", "2",
                    "--output-dir", str(tmp_path / "alone"), "--no-progress")
    assert result.exit_code == 0, result.output
    alone = {int(r["episode"]): r["accuracy"] for r in rows(tmp_path / "alone" / "test_episodes.csv")}
    both = {int(r["episode"]): r["accuracy"] for r in rows(out / "test_episodes.csv") if r["source"] == "glyphs"}
    assert alone == both
    # Both sources again (nothing named): the run's whole test, per source.
    result = invoke("eval", str(ckpt), "--test-queries", "2", "--output-dir", str(tmp_path / "again"),
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert rows(tmp_path / "again" / "test_episodes.csv") == rows(out / "test_episodes.csv")


def test_a_model_trained_on_two_sources_exports_with_an_open_set_threshold_from_both(multi, folder, tmp_path):
    """Calibration rebuilds the training data's validation classes: every source's (no registry entry is named
    glyphs+imagefolder)."""
    out, _ = multi
    support = tmp_path / "support"
    for c in range(4):
        (support / f"c{c}").mkdir(parents=True)
        (support / f"c{c}" / "0.png").write_bytes((folder / f"class{c}" / "0.png").read_bytes())
    result = invoke("export", "-c", str(out / "checkpoints" / "last.ckpt"), "-s", str(support),
                    "-o", str(tmp_path / "m.fewshot"))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["components"]["dataset"]["sources"][1]["name"] == "imagefolder"
    classes = int(re.search(r"calibrated on \d+ episodes of (\d+) validation classes", result.output).group(1))
    assert classes > 3  # the folder has 3 validation classes; glyphs' are there too


@pytest.fixture(scope="module")
def glyphs_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "glyphs"
    result = invoke("run", *[a for o in GLYPHS for a in ("--dataset-opt", o)], *SHAPE, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out / "checkpoints" / "last.ckpt"


def test_cross_domain_eval_of_a_model_trained_on_another_dataset(glyphs_model, folder, tmp_path):
    options = [a for o in folder_options(folder, qualified=False) for a in ("--dataset-opt", o)]
    result = invoke("eval", str(glyphs_model), "--dataset", "imagefolder", *options, "--test-queries", "2",
                    "--output-dir", str(tmp_path / "cross"), "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cross" / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder" and summary["episodes"] == 6
    assert summary["components"]["dataset"]["options"]["root"] == str(folder)
    assert "samples_per_class" not in summary["options"]["dataset"]  # the training data's options stayed behind


def test_eval_on_several_sources_reports_each_as_its_own_eval_does(glyphs_model, folder, tmp_path):
    """A glyphs model on glyphs and the folder at once: the glyphs rows are its own test's, the folder rows
    those of the single cross-domain evaluation (each source's episodes do not depend on the others)."""
    results = {}
    for name, args in (("both", two_sources(folder)), ("glyphs", ["--dataset", "glyphs"]),
                       ("folder", ["--dataset", "imagefolder",
                                   *[a for o in folder_options(folder, False) for a in ("--dataset-opt", o)]])):
        result = invoke("eval", str(glyphs_model), *args, "--test-queries", "2", "--output-dir",
                        str(tmp_path / name), "--no-progress")
        assert result.exit_code == 0, result.output
        results[name] = rows(tmp_path / name / "test_episodes.csv")
    for source, alone in (("glyphs", "glyphs"), ("imagefolder", "folder")):
        mine = [r for r in results["both"] if r["source"] == source]
        assert mine == [{"source": source, **r} for r in results[alone]]


def test_python_api_evaluates_on_in_memory_arrays(glyphs_model, tmp_path):
    import metareg

    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(12).repeat_interleave(6)
    images = (torch.rand(12, 1, SIDE, SIDE, generator=gen)[labels] * 255).to(torch.uint8)
    data = metareg.FewShotDataset.from_arrays(images, labels, name="mine", ratios=(0.5, 0.25, 0.25))
    result = metareg.evaluate(glyphs_model, dataset=data, output_dir=tmp_path / "mine", test_queries=2)
    assert result.summary["dataset"] == "mine" and result.summary["episodes"] == 6
    assert result.report.mean > 0.9  # one fixed pattern per class: the nearest prototype is always right


def test_cross_domain_eval_needs_the_training_datas_options_dropped(glyphs_model, folder, tmp_path, monkeypatch):
    """The check above, broken: carrying glyphs' saved options over to the folder is refused (exit 2)."""
    import metareg.sources

    monkeypatch.setattr(metareg.sources, "retarget", lambda saved, overrides: dict(saved))
    options = [a for o in folder_options(folder, qualified=False) for a in ("--dataset-opt", o)]
    result = invoke("eval", str(glyphs_model), "--dataset", "imagefolder", *options, "--test-queries", "2",
                    "--output-dir", str(tmp_path / "cross"), "--no-progress")
    assert result.exit_code == 2 and "samples_per_class" in result.output


def test_cross_domain_eval_on_images_of_another_size_is_refused_in_one_line(glyphs_model, folder, tmp_path):
    result = invoke("eval", str(glyphs_model), "--dataset", "imagefolder", "--dataset-opt", f"root={folder}",
                    "--dataset-opt", "channels=1", "--dataset-opt", "image_size=20", "--test-queries", "2",
                    "--output-dir", str(tmp_path / "cross"), "--no-progress")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "20px" in result.output and "14px" in result.output
    assert not (tmp_path / "cross").exists()


def bad(folder: Path, name: str) -> list[str]:
    return {
        "unqualified": ["--dataset", "glyphs", "--dataset", "imagefolder", "--dataset-opt", "image_size=14"],
        "unknown qualifier": [*two_sources(folder), "--dataset-opt", "omniglot.root=x"],
        "other dataset's option": ["--dataset", "glyphs", "--dataset-opt", "imagefolder.root=x"],
        "twice": ["--dataset", "glyphs", "--dataset", "glyphs"],
        "sizes differ": [*two_sources(folder), "--dataset-opt", "imagefolder.image_size=20"],
        "channels differ": [*two_sources(folder), "--dataset-opt", "imagefolder.channels=3"],
    }[name]


@pytest.mark.parametrize("name, message", [
    ("unqualified", "does not say which dataset it is for"),
    ("unknown qualifier", "'omniglot', which is not in this run"),
    ("other dataset's option", "'imagefolder', which is not in this run"),
    ("twice", "listed twice"),
    ("sizes differ", "1x14px and 1x20px"),
    ("channels differ", "all grayscale or all colour"),
])
def test_bad_sources_are_refused_in_one_line_before_anything_is_written(folder, tmp_path, name, message):
    out = tmp_path / "run"
    result = invoke("run", *bad(folder, name), *SHAPE, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1 and message in result.output
    assert not out.exists()


def test_a_config_file_lists_sources_with_options_and_weights(folder, tmp_path):
    config = tmp_path / "sources.yaml"
    config.write_text(f"""datasets:
  - name: glyphs
    options: {{image_size: 14, samples_per_class: 6}}
    weight: 3
  - name: imagefolder
    options: {{root: {folder}, image_size: 14, channels: 1}}
""")
    result = invoke("run", "--config", str(config), "--dataset-opt", "glyphs.seed=2", "--print-config")
    assert result.exit_code == 0, result.output
    import yaml

    printed = yaml.safe_load(result.output)
    assert printed["dataset"] == "glyphs+imagefolder"
    assert printed["datasets"] == [{"name": "glyphs", "weight": 3.0}, {"name": "imagefolder", "weight": 1.0}]
    options = printed["dataset_options"]
    assert options["glyphs.seed"] == 2 and options["glyphs.image_size"] == 14 and options["imagefolder.lazy"] is False
    # The printed settings are a config file of their own; a single --dataset on the command line replaces the list.
    again = tmp_path / "printed.yaml"
    again.write_text(result.output)
    assert invoke("run", "--config", str(again), "--print-config").output == result.output
    config.write_text("datasets: [{name: glyphs, weight: 0}, {name: imagefolder}]\n")
    refused = invoke("run", "--config", str(config), "--print-config")
    assert refused.exit_code == 2 and "weight must be a number in (0, 1e6]" in refused.output


def test_one_dataset_may_be_qualified_by_its_own_name():
    plain = invoke("run", "--dataset-opt", "image_size=14", "--print-config")
    qualified = invoke("run", "--dataset", "glyphs", "--dataset-opt", "glyphs.image_size=14", "--print-config")
    assert plain.exit_code == qualified.exit_code == 0 and plain.output == qualified.output
    assert "datasets: []" in plain.output


def test_training_episodes_come_from_sources_drawn_by_weight_as_a_function_of_seed_epoch_and_index(folder):
    import metareg
    from metareg.episodes import generator

    config = {"datasets": [{"name": "glyphs", "weight": 3}, {"name": "imagefolder"}],
              "dataset_options": {**{f"glyphs.{k}": v for k, v in (o.split("=") for o in GLYPHS)},
                                  **dict(o.split("=") for o in folder_options(folder, qualified=True))},
              "ways": 3, "shots": 1, "queries": 2, "meta_batch_size": 50, "test_queries": 2}
    module, data = metareg.prepare(config)
    data.setup("fit")
    train = data.train_set
    sources = torch.cat([train._draw(50, generator(0, "train", 0, i))[0] for i in range(8)])
    assert abs(float((sources == 0).double().mean()) - 0.75) < 0.06  # 3:1, over 400 episodes
    first, again, other = train[0], train[0], train[1]
    assert torch.equal(first.images, again.images) and not torch.equal(first.images, other.images)
    train.epoch = 1
    assert not torch.equal(train[0].images, first.images)
    assert data.source_names == ("glyphs", "imagefolder") and module.task.num_train_classes == (
        data.sources[0].dataset.train.num_classes + data.sources[1].dataset.train.num_classes)


# Meta-Dataset is both: several sources and variable episodes. The folder's 15 classes split 5/5/5 (variable
# episodes have at least 5 ways); glyphs test episodes reach 50 ways of up to 3 shots and 3 queries at 6 images.
VARIABLE = [*["--dataset-opt", "imagefolder.ratios=1,1,1"], "--episodes", "variable", "--meta-batch-size", "2",
            "--epoch-length", "2", "--max-epochs", "1", "--test-num-tasks", "3", "--val-num-tasks", "1",
            "--eval-meta-batch-size", "2", "--backbone-opt", "hidden=8", "--no-progress"]


def test_variable_episodes_from_two_sources_report_each_source_as_its_own_eval_does(folder, tmp_path):
    out = tmp_path / "variable"
    result = invoke("run", *two_sources(folder), *VARIABLE, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    head = r"^variable-way variable-shot: \d+\.\d ± \d+\.\d % \(95% CI, mean over 2 sources, 6 test episodes\)$"
    assert re.search(head, result.output, re.M), result.output
    assert {m.group(1): int(m.group(4)) for m in SOURCE_LINE.finditer(result.output)} == {"glyphs": 3,
                                                                                         "imagefolder": 3}
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ways"], summary["shots"], summary["queries"]) == ("variable",) * 3
    assert list(summary["sources"]) == ["glyphs", "imagefolder"]
    table = rows(out / "test_episodes.csv")
    assert list(table[0]) == ["source", "episode", "accuracy"]
    assert [(r["source"], int(r["episode"])) for r in table] == [(s, j) for s in ("glyphs", "imagefolder")
                                                                for j in range(3)]
    # Episode j of glyphs in the two-source test is the variable episode j of glyphs alone, scored alike.
    ckpt = out / summary["best_checkpoint"]
    result = invoke("eval", str(ckpt), "--dataset", "glyphs", "--output-dir", str(tmp_path / "alone"),
                    "--no-progress")
    assert result.exit_code == 0, result.output
    alone = rows(tmp_path / "alone" / "test_episodes.csv")
    assert [{"source": "glyphs", **r} for r in alone] == [r for r in table if r["source"] == "glyphs"]


def test_a_variable_meta_batch_mixing_sources_is_padded_to_its_own_largest_episode(folder):
    import metareg
    from metareg.episodes import PAD_LABEL, generator

    config = {"datasets": [{"name": "glyphs"}, {"name": "imagefolder"}], "episodes": "variable",
              "dataset_options": {**{f"glyphs.{k}": v for k, v in (o.split("=") for o in GLYPHS)},
                                  **dict(o.split("=") for o in folder_options(folder, qualified=True)),
                                  "imagefolder.ratios": "1,1,1"},
              "meta_batch_size": 6}
    _, data = metareg.prepare(config)
    data.setup("fit")
    train = data.train_set
    source, draw = train._draw(6, generator(train.seed, "train", 0, 0))  # what train[0] draws
    assert set(source.tolist()) == {0, 1}  # this meta-batch mixes the sources
    batch = train[0]
    support, query = (batch.support_labels != PAD_LABEL).sum(1), (batch.query_labels != PAD_LABEL).sum(1)
    assert batch.support_labels.shape[1] == int(support.max()) and batch.query_labels.shape[1] == int(query.max())
    assert len(set(support.tolist())) > 1  # episodes of different sizes, padded, in one masked batch
    assert torch.equal(batch.support_labels, draw.support_labels) and torch.equal(batch.ways, draw.ways)
    for b, s in enumerate(source.tolist()):  # each episode's images come from its own source's samples
        assert torch.equal(batch.images[b], data.sources[s].dataset.train.images.gather(draw.index[b]))
    episodes = batch.prepared()
    assert episodes.padded and episodes.way_mask.sum(1).tolist() == batch.ways.tolist()
