"""`metareg run --compile`: the training step through torch.compile gives eager's results.

The compiler's backend here is ``aot_eager``: TorchDynamo's capture and AOTAutograd's derived
backward, the parts that could change what a step computes, without Inductor's C++ code
generation (minutes on a small CPU; bench/bench_strategies.py --compare protonet-compile
measures that one).
"""
from __future__ import annotations

import functools

import pytest
import torch
from click.testing import CliRunner

from metareg.cli import cli

TINY = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6", "--backbone-opt", "hidden=8",
        "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "2",
        "--epoch-length", "3",
        "--max-epochs", "1", "--test-num-tasks", "4", "--val-num-tasks", "2", "--eval-meta-batch-size", "4",
        "--no-progress"]


def weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_compiled_training_step_matches_eager(tmp_path, monkeypatch):
    compiled_calls = []
    real_compile = torch.compile

    def compile_for_test(fn, **kwargs):
        inner = real_compile(fn, backend="aot_eager", **kwargs)

        @functools.wraps(fn)
        def counted(*args, **kw):
            compiled_calls.append(fn.__name__)
            return inner(*args, **kw)
        return counted

    runner = CliRunner()
    eager = runner.invoke(cli, ["run", *TINY, "--output-dir", str(tmp_path / "eager")], catch_exceptions=False)
    assert eager.exit_code == 0, eager.output
    monkeypatch.setattr(torch, "compile", compile_for_test)
    compiled = runner.invoke(cli, ["run", *TINY, "--compile", "--output-dir", str(tmp_path / "compiled")],
                             catch_exceptions=False)
    assert compiled.exit_code == 0, compiled.output
    assert compiled_calls.count("loss") == 3  # every training step went through the compiled loss
    a, b = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert close(a, b)
    # the comparison would see a difference: one weight moved by 1e-3 is not "equal within tolerance"
    key = next(iter(b))
    b[key] = b[key] + 1e-3
    assert not close(a, b)


@pytest.mark.parametrize("value", ["maybe", "1"])
def test_compile_setting_must_be_true_or_false(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"compile: {value}\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--print-config"])
    assert result.exit_code == 2
    assert "setting 'compile': expected true or false" in result.output
