"""A trained model is rebuilt from its own file: the pretrained weights it started from are not needed again."""
from __future__ import annotations

import os

import torch
from click.testing import CliRunner

from metareg.cli import cli
from metareg.model_loading import load_model

SIZE = 14
TINY = ["--dataset-opt", f"image_size={SIZE}", "--dataset-opt", "samples_per_class=6", "--backbone-opt", "hidden=8",
        "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2",
        "--epoch-length", "2",
        "--max-epochs", "1", "--test-num-tasks", "4", "--val-num-tasks", "2", "--eval-meta-batch-size", "4",
        "--no-progress"]


def _pretrained_file(path):
    from metareg_backbones.conv import conv4
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = conv4(channels=1, image_size=SIZE, hidden=8)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.fspath(path),
              metadata={"pretrained_on": "glyphs-elsewhere"})
    return path


def test_a_checkpoint_trained_from_pretrained_weights_loads_and_predicts_without_them(tmp_path):
    weights = _pretrained_file(tmp_path / "start.safetensors")
    out = tmp_path / "run"
    ran = CliRunner().invoke(cli, ["run", *TINY, "--backbone-opt", f"pretrained={weights}", "--output-dir", out])
    assert ran.exit_code == 0, ran.output
    ckpt = out / "checkpoints" / "last.ckpt"
    before = load_model(ckpt)
    assert before.strategy.backbone.pretrained_on == "glyphs-elsewhere"

    weights.unlink()  # the run's own file holds every weight; the starting point is history
    after = load_model(ckpt)
    assert after.strategy.backbone.pretrained_on == "glyphs-elsewhere"  # provenance kept for the leak warning
    for (name, a), (_, b) in zip(before.strategy.state_dict().items(), after.strategy.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    again = CliRunner().invoke(cli, ["eval", str(ckpt), "--test-num-tasks", "4", "--eval-meta-batch-size", "4",
                                     "--no-progress", "--output-dir", tmp_path / "eval"])
    assert again.exit_code == 0, again.output
