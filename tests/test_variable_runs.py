"""`metareg run --episodes variable` through the command line: a run that trains and tests on
Meta-Dataset episodes and says so, and the refusals that come before any work."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from click.testing import CliRunner

import metareg
from metareg.cli import cli
from metareg.plugins import load_plugins, set_plugins

# Few, small episodes: 24 classes of 6 to 10 images split 14/5/5, so ways stay at 5 to 14 in training and 5 in
# validation and test, with 3 queries per class and class-imbalanced shots.
TINY = ["--dataset", "imagefolder", "--dataset-opt", "image_size=14", "--dataset-opt", "channels=1",
        "--backbone-opt", "hidden=8", "--meta-batch-size", "2", "--epoch-length", "3", "--max-epochs", "1",
        "--test-num-tasks", "8", "--val-num-tasks", "4", "--eval-meta-batch-size", "4", "--no-progress"]


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    root = tmp_path / "classes"
    for c in range(24):
        (root / f"class{c:02d}").mkdir(parents=True)
        centre = torch.randint(0, 255, (14, 14), generator=g)
        for i in range(6 + c % 5):
            noisy = (centre + torch.randint(-30, 30, (14, 14), generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(noisy.numpy(), mode="L").save(root / f"class{c:02d}" / f"{i}.png")
    return ["--dataset-opt", f"root={root}"]
LINE = re.compile(r"^variable-way variable-shot: (\d+\.\d) ± (\d+\.\d) % \(95% CI, 8 test episodes\)$", re.M)


def run(*args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def test_protonet_trains_and_tests_on_variable_episodes(tmp_path, folder):
    out = tmp_path / "variable"
    result = run("--episodes", "variable", "--strategy", "prototypicalnetworks", *TINY, *folder,
                 "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "variable episodes (Meta-Dataset: 5-50 ways" in result.output  # the start line, not "5-way 1-shot"
    assert "5-way 1-shot" not in result.output
    m = LINE.search(result.output)
    assert m, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ways"], summary["shots"], summary["queries"]) == ("variable",) * 3
    with open(out / "test_episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    accuracies = [float(r["accuracy"]) for r in rows]
    assert abs(100 * sum(accuracies) / 8 - float(m.group(1))) < 0.06
    # Accuracies over each 5-way test episode's own 15 queries (3 per class), padding left out.
    assert all(abs(a * 15 - round(a * 15)) < 1e-4 for a in accuracies)
    metrics = (out / "metrics.csv").read_text()
    assert "train_loss" in metrics and "nan" not in metrics.lower()


def test_a_strategy_without_the_capability_is_refused_before_any_work(tmp_path, folder):
    class FixedOnly(metareg.Strategy):
        def forward(self, episodes):
            feats = self.embed(torch.cat([episodes.support, episodes.query], 1))
            s, q = feats[:, : episodes.support.shape[1]], feats[:, episodes.support.shape[1]:]
            return -torch.cdist(q, metareg.class_means(s, episodes.support_labels, episodes.ways))

    class Plugin:
        @metareg.hookimpl
        def metareg_strategies(self):
            yield metareg.StrategySpec("fixedonly", FixedOnly, summary="class means, fixed episodes only")

    from importlib import metadata

    set_plugins(load_plugins(list(metadata.entry_points(group="metareg")), extra=[("fixedonly", Plugin())]))
    out = tmp_path / "refused"
    result = run("--episodes", "variable", "--strategy", "fixedonly", *TINY, *folder, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: strategy 'fixedonly' cannot train on variable episodes")
    assert "use --episodes fixed, or one of: anil, default, maml, metaoptnet, prototypicalnetworks" in result.output
    assert not out.exists()
    assert run("--strategy", "fixedonly", *TINY, *folder, "--print-config").exit_code == 0  # fixed: fine


def test_maml_learned_head_is_refused_with_the_fix(tmp_path, folder):
    out = tmp_path / "maml"
    result = run("--episodes", "variable", "--strategy", "maml", *TINY, *folder, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert "--strategy-opt head_init=zero" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_too_few_classes_for_meta_dataset_episodes_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = metareg.FewShotDataset.from_arrays(
        torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(10).repeat_interleave(4),
        name="ten", ratios=(0.6, 0.2, 0.2))
    with pytest.raises(metareg.DataError, match=r"split has 2 classes but variable \(Meta-Dataset\) episodes have "
                                                r"at least 5 ways.*or --episodes fixed"):
        metareg.prepare(dataset=data, episodes="variable")
