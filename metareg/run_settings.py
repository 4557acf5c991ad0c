"""Which settings a resumed run and ``metareg eval`` may change, from groups each listed once.

``metareg eval``'s command-line options and its check both come from :data:`EVAL_SETTINGS`;
``metareg run --resume`` checks :data:`RESUMABLE`. Two hand-kept lists drifted before (eval
offered ``--precision`` and then refused it).
"""
from __future__ import annotations

from pathlib import Path

from metareg.config import RunConfig
from metareg.errors import ConfigError

# What a finished run was tested with; changing them is a new evaluation (`metareg eval`), not a resume.
TEST_SETTINGS = ("test_ways", "test_shots", "test_queries", "test_num_tasks")
# How testing is batched, and where and how a process runs: none of them changes what a model computes.
TESTING = frozenset({*TEST_SETTINGS, "eval_meta_batch_size"})
HARDWARE = frozenset({"accelerator", "devices", "num_nodes", "trainer_strategy"})
SESSION = frozenset({"output_dir", "progress"})

# Settings that may differ when a run is resumed (they do not change what was computed so far).
RESUMABLE = TESTING | HARDWARE | SESSION | {"max_epochs", "max_steps", "logger"}
# The settings `metareg eval` may change: a trained model on other test episodes, data or hardware.
EVAL_SETTINGS = TESTING | HARDWARE | SESSION | {"precision", "seed", "dataset", "datasets", "dataset_options"}


def check_resume(run_dir: Path, last: Path, config: RunConfig) -> None:
    """Refuse a resume whose settings would not continue what the run computed so far."""
    from metareg.checkpoint import read_checkpoint

    saved = read_checkpoint(last)["metareg"]["config"]
    now = config.to_dict()
    # A setting added after the run was saved has its default there.
    saved = {**RunConfig().to_dict(), **saved}
    changed = {k for k in RunConfig.keys() if k not in RESUMABLE and saved.get(k) != now[k]}
    if changed:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with different settings: {', '.join(sorted(changed))} "
            f"differ from its config.yaml (only {', '.join(sorted(RESUMABLE))} may change on resume)"
        )
    budget = [k for k in ("max_epochs", "max_steps") if saved.get(k) != now[k]]
    if config.scheduler == "cosine" and budget:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with a different {' and '.join(budget)}: --scheduler cosine anneals the "
            f"learning rate over the budget set when the run started (max_epochs={saved.get('max_epochs')}, "
            f"max_steps={saved.get('max_steps')}), so the steps already taken used learning rates of that length; "
            "start a new run with the longer budget instead"
        )
    tests = [k for k in TEST_SETTINGS if saved.get(k) != now[k]]
    if (run_dir / "summary.json").is_file() and tests and not budget:
        raise ConfigError(
            f"{str(run_dir)!r} is a finished run, tested with other settings than {', '.join(tests)} now given; "
            f"--resume would replace its results. Test it again with `metareg eval "
            f"{str(run_dir / 'checkpoints' / 'last.ckpt')} --test-...` (results go to a sub-directory of their own)"
        )


def check_eval_settings(overrides: dict) -> None:
    bad = sorted(set(overrides) - EVAL_SETTINGS)
    if bad:
        raise ConfigError(f"metareg eval cannot change {', '.join(bad)}; "
                          f"it may change {', '.join(sorted(EVAL_SETTINGS))}")
