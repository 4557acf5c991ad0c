"""report.html: written at the end of `metareg run` and `metareg eval`, self-contained, honest about missing curves."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import metareg.run
from metareg.cli import cli
from tests.test_run import DATA, TINY

IMAGE = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return CliRunner().invoke(cli, ["run", *TINY, *args])


def figure(summary: dict) -> str:
    return f"{100 * summary['accuracy']:.1f} ± {100 * summary['ci95']:.1f} %"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    result = run("--output-dir", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_a_run_ends_with_a_self_contained_report_of_its_accuracy_and_curves(finished):
    page = (finished / "report.html").read_text()
    summary = json.loads((finished / "summary.json").read_text())
    assert figure(summary) in page and summary["line"] in page
    images = IMAGE.findall(page)
    assert len(images) == 1
    png = base64.b64decode(images[0])
    assert png.startswith(PNG) and png == (finished / "learning_curve.png").read_bytes()  # drawn once, both places
    # Nothing to fetch: no scripts, style sheets or images from elsewhere.
    assert not re.search(r"<script|<link|src=\"(?!data:)|url\(", page)
    assert "No learning curves" not in page
    assert summary["strategy"] in page and summary["git"]["commit"] in page


def test_summary_says_where_the_result_came_from(finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert isinstance(summary["wall_seconds"], float) and summary["wall_seconds"] > 0
    assert summary["device"].startswith("cpu")
    # the options as given (on the command line: text), re-runnable as they are
    assert summary["options"]["backbone"] == {"hidden": "8"}
    assert summary["options"]["dataset"] == {"image_size": "14", "samples_per_class": "6"}
    assert re.fullmatch(r"[0-9a-f]{40}", summary["git"]["commit"]) and isinstance(summary["git"]["dirty"], bool)


def test_eval_writes_a_report_of_its_own_result(finished, tmp_path):
    out = tmp_path / "e"
    result = CliRunner().invoke(cli, ["eval", str(finished / "checkpoints" / "last.ckpt"), *DATA, "--test-num-tasks",
                                      "5", "--output-dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 5 and figure(summary) in page
    assert "No learning curves: this directory holds an evaluation" in page and not IMAGE.search(page)


def test_a_run_that_logged_nothing_gets_a_report_that_says_so(tmp_path):
    out = tmp_path / "fast"
    # fast_dev_run replaces every logger by a dummy: no metrics.csv is written.
    result = run("--trainer-opt", "fast_dev_run=true", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert not (out / "metrics.csv").exists()
    page = (out / "report.html").read_text()
    assert figure(json.loads((out / "summary.json").read_text())) in page
    assert "No learning curves: metrics.csv does not exist" in page and not IMAGE.search(page)


def test_a_damaged_metrics_file_is_named_in_the_report_not_a_traceback(tmp_path, monkeypatch):
    from metareg import run_writers

    save = run_writers.MetricsLogger.save

    def torn(self):  # as if the file had been cut short after metareg wrote it
        save(self)
        with open(Path(self.log_dir) / "metrics.csv", "a") as f:
            f.write("1,7")

    monkeypatch.setattr(run_writers.MetricsLogger, "save", torn)

    def reread(path):
        raise AssertionError(f"{path} re-read: the summary comes from the results the learner holds")

    monkeypatch.setattr(metareg.run, "read_episodes", reread)  # only ddp_spawn, whose testers are gone, needs it
    out = tmp_path / "torn"
    result = run("--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    page = (out / "report.html").read_text()
    assert figure(json.loads((out / "summary.json").read_text())) in page
    assert re.search(r"No learning curves: metrics.csv is damaged: line \d+ does not match its header", page)
    assert not IMAGE.search(page) and not (out / "learning_curve.png").exists()


def _step_not_a_number(text: str) -> str:
    lines = text.splitlines()
    epoch, _step, rest = lines[1].split(",", 2)  # columns: epoch, step, then the metrics
    lines[1] = f"{epoch},seven,{rest}"
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("damage, reason", [
    (_step_not_a_number, "is damaged: line 2: invalid literal for int() with base 10: 'seven'"),
    (lambda text: text.splitlines()[0] + "\n", "holds no training loss or validation accuracy"),
    (lambda text: "\udcff", "cannot be read"),
])
def test_every_kind_of_unreadable_metrics_gives_a_reason(finished, tmp_path, damage, reason):
    from metareg.run_report import learning_curve

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    metrics = copy / "metrics.csv"
    text = damage(metrics.read_text())
    metrics.write_bytes(text.encode("utf-8", "surrogateescape"))
    (copy / "learning_curve.png").unlink()
    png, why = learning_curve(copy)
    assert png is None and reason in why
    assert not (copy / "learning_curve.png").exists()
