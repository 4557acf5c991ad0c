"""MAML under bf16 mixed precision (issue 16): it trains through the CLI, and its meta-gradient agrees with
float32's.

Issue 16's obstacle, "Expected grad_output to have type BFloat16 but got Float" (CUDA; on a CPU
"expected scalar type BFloat16 but found Float"), is the backward of torch's own batch norm under
autocast inside ``vmap(grad(...))``: its native kernel receives a float32 gradient for a bfloat16
input. The plain reference loop (``torch.func.replace_all_batch_norm_modules_``) fails that way.
MAML's ``BatchStatisticsFunction`` writes its backward with plain tensor operations, whose dtypes
autograd reconciles, and MAML also turns autocast off around its inner loop and casts weights and
images to bfloat16 itself (``inner_precision='auto'``). ``test_torch_batch_norm_under_autocast_fails``
shows the failure these tests would meet with torch's batch norm and autocast left on.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from click.testing import CliRunner
from metareg_strategies import maml as maml_module
from metareg_strategies.maml import MAML

import metareg
from metareg.cli import cli
from metareg.episodes import episode_labels

WAYS, SHOTS, QUERIES, TASKS, SIZE = 3, 1, 2, 4, 14


def meta_gradient(bf16: bool) -> torch.Tensor:
    from metareg_backbones.conv import conv4

    torch.manual_seed(0)
    backbone = conv4(channels=1, image_size=SIZE, hidden=8, layers=2)
    strategy = MAML(adaptation_lr=0.4)
    strategy.setup(backbone, metareg.TaskInfo(WAYS, SHOTS, QUERIES, WAYS, SHOTS, QUERIES, 10, 1, SIZE,
                                              backbone.out_features))
    strategy.train()
    g = torch.Generator().manual_seed(1)
    support = torch.rand(TASKS, WAYS * SHOTS, 1, SIZE, SIZE, generator=g)
    query = torch.rand(TASKS, WAYS * QUERIES, 1, SIZE, SIZE, generator=g)
    episodes = metareg.EpisodeBatch(support, episode_labels(TASKS, WAYS, SHOTS, "cpu"), query,
                                    episode_labels(TASKS, WAYS, QUERIES, "cpu"), WAYS)
    # what Lightning's bf16-mixed does around a training step
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = strategy.loss(episodes).loss
    loss.backward()
    return torch.cat([p.grad.flatten() for p in strategy.parameters() if p.grad is not None])


def test_bf16_meta_gradient_agrees_with_float32():
    full, mixed = meta_gradient(False), meta_gradient(True)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    cosine = torch.nn.functional.cosine_similarity(full, mixed, dim=0)
    assert cosine > 0.98, f"bf16 meta-gradient points elsewhere than float32's: cosine {cosine:.3f}"
    assert (mixed.norm() / full.norm() - 1).abs() < 0.1


def test_torch_batch_norm_under_autocast_fails(monkeypatch):
    """The configuration of issue 16's report: torch's batch norm, autocast on around vmap(grad(...))."""
    monkeypatch.setattr(maml_module, "use_batch_statistics", torch.func.replace_all_batch_norm_modules_)
    monkeypatch.setattr(maml_module, "full_precision", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(maml_module, "autocast_dtype", lambda device: None)
    with pytest.raises(RuntimeError, match="BFloat16"):
        meta_gradient(True)


@pytest.mark.slow
def test_maml_trains_with_bf16_mixed_through_the_cli(tmp_path):
    result = CliRunner().invoke(cli, [
        "run", "--strategy", "maml", "--precision", "bf16-mixed", "--dataset", "glyphs",
        "--dataset-opt", f"image_size={SIZE}", "--dataset-opt", "samples_per_class=6",
        "--backbone-opt", "hidden=4", "--backbone-opt", "layers=2",
        "--ways", str(WAYS), "--shots", "1", "--queries", "1", "--test-queries", "1", "--meta-batch-size", "2",
        "--epoch-length", "2", "--max-epochs", "1", "--val-num-tasks", "2", "--test-num-tasks", "2",
        "--no-progress", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight") and v.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)
    assert f"{WAYS}-way 1-shot: " in result.output
