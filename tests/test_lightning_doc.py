"""docs/lightning.md: its example runs as written, so the documented way to use your own Trainer cannot rot."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "lightning.md"
RESULT = re.compile(r"^3-way 1-shot: \d+\.\d ± \d+\.\d % \(95% CI, 20 test episodes\)$", re.M)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.M | re.S)


def test_the_own_trainer_example_trains_and_tests(tmp_path, monkeypatch, capsys):
    import pytorch_lightning as pl

    import metareg

    (example,) = python_blocks(DOC.read_text())
    monkeypatch.chdir(tmp_path)  # where a user's Trainer would put anything it writes
    namespace: dict = {"__name__": "__main__"}
    exec(compile(example, str(DOC), "exec"), namespace)  # noqa: S102 - the documentation's own code

    module, data, trainer = namespace["module"], namespace["data"], namespace["trainer"]
    assert isinstance(module, metareg.MetaLearner) and isinstance(module, pl.LightningModule)
    assert isinstance(data, metareg.EpisodeDataModule) and isinstance(data, pl.LightningDataModule)
    assert trainer.global_step == 2 * 10  # two epochs of epoch_length meta-batches: it trained
    ids, accuracies = module.test_results
    assert ids == list(range(20)) and all(0 <= a <= 1 for a in accuracies)
    assert RESULT.search(capsys.readouterr().out)
    assert not list(tmp_path.iterdir())  # no logger, no checkpoints: nothing written behind the user's back


def test_prepare_refuses_bad_settings_before_any_work():
    import metareg

    with pytest.raises(metareg.ConfigError, match="unknown setting 'wayz'"):
        metareg.prepare(wayz=3)
    with pytest.raises(metareg.ComponentNotFound, match="unknown strategy 'protonets'"):
        metareg.prepare(strategy="protonets")
