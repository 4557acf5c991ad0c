"""Training and evaluation runs: the Python API behind `metareg run` and `metareg eval`.

Run directory layout::

    RUN/config.yaml          resolved settings (re-run with `metareg run --config RUN/config.yaml`)
    RUN/metrics.csv          Lightning's CSV log: train loss/accuracy per step, val_acc per epoch
    RUN/checkpoints/         last.ckpt and best-*.ckpt (best validation accuracy)
    RUN/test_episodes.csv    accuracy of every fixed test episode
    RUN/summary.json         accuracy, 95% CI, episodes, seed, versions
    RUN/learning_curve.png
    RUN/.metareg-run         marks the directory as a metareg run (see metareg.rundir)
    RUN/.metareg-lock        held (flock) by the process that runs it
    RUN/eval-*/              `metareg eval` results, each in a directory of its own

A run directory is claimed before anything is written (metareg.rundir), every file is
written atomically (metareg.files), and everything the run records about its own files
is relative to it, so a copied or moved run resumes and evaluates from its own files.

Re-entrancy: Lightning's ``ddp`` launcher re-executes the command line in each
process. The first process picks the run directory and exports it as
``METAREG_RUN_DIR``; the processes it launches (``LOCAL_RANK`` > 0 or
``NODE_RANK`` > 0) read it back, so every process writes to the same place.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from metareg.config import RunConfig
from metareg.errors import CheckpointError, ConfigError, MetaregError
from metareg.evaluation import Report, read_episodes, summarise
from metareg.files import atomic_output, atomic_write
from metareg.hardware import check as check_hardware
from metareg.rundir import RunDir, check, launched_worker, read_marker, unique

RUN_DIR_ENV = "METAREG_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    report: Report
    summary: dict[str, Any]
    best_checkpoint: Path | None = None


def _run_dir(config: RunConfig, resume: bool) -> Path:
    if launched_worker() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if config.output_dir:
        path = Path(config.output_dir)
    elif resume:
        raise ConfigError("--resume needs --output-dir: the run directory to continue")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = unique(Path("runs") / f"{stamp}-{config.strategy.replace(':', '_')}-{config.dataset.replace(':', '_')}")
    path = path.resolve()
    check(path, "run", resume=resume)  # read-only: refuse before any work starts
    return path


def _seed_everything(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def _versions(plugins) -> dict[str, Any]:
    import pytorch_lightning
    import torch

    import metareg

    return {
        "metareg": metareg.__version__,
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
        "plugins": {p.distribution or p.name: p.version for p in plugins.plugins if p.status == "ok"},
    }


def _trainer(config: RunConfig, run_dir: Path | None, *, fit: bool, resume: bool = False,
             user_callbacks=(), user_loggers=()):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    from metareg.checkpoint_io import AtomicCheckpointIO
    from metareg.quiet import QuietWorkers, quiet
    from metareg.run_writers import MetricsLogger, RunCheckpoint
    from metareg.trainer_options import for_trainer, make_logger

    callbacks, logger = list(user_callbacks), False
    if fit:
        # Best on validation accuracy, and last.ckpt after every epoch. Lightning's own save_last only
        # writes when the best improved, which would leave --resume an epoch or more behind.
        callbacks.append(RunCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best-{epoch}-{val_acc:.4f}", monitor="val_acc", mode="max",
            save_top_k=1, auto_insert_metric_name=False,
            # A run killed after saving a best checkpoint but before last.ckpt saves that same file again when
            # resumed (same epoch, same val_acc, bit-for-bit): replace it (atomically) instead of adding a -v1 copy.
            enable_version_counter=False,
        ))
        callbacks.append(RunCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                                       enable_version_counter=False))
        # metrics.csv stays metareg's own (atomic, kept across resumes); other loggers write beside it.
        extra = make_logger(config.logger, run_dir)
        logger = [MetricsLogger(run_dir, resume=resume), *([extra] if extra else []), *user_loggers]
    budget = config.max_steps if config.max_steps > 0 else config.max_epochs * config.epoch_length
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, config.epoch_length // 20)))
    callbacks.append(QuietWorkers())
    with quiet(), _trainer_options_blamed(config):
        trainer = pl.Trainer(
            accelerator=config.accelerator,
            devices=config.devices_value(),
            num_nodes=config.num_nodes,
            strategy=config.trainer_strategy,
            precision=config.precision,
            max_epochs=config.max_epochs,
            max_steps=config.max_steps,
            logger=logger,
            callbacks=callbacks,
            enable_checkpointing=fit,
            enable_progress_bar=config.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            inference_mode=False,  # MAML-style strategies adapt with gradients during evaluation
            gradient_clip_val=config.gradient_clip_val,
            # never longer than the run: a budget shorter than the interval would leave no learning curve
            log_every_n_steps=max(1, min(10, config.epoch_length, budget if budget > 0 else 10)),
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run_dir) if run_dir else None,
            **for_trainer(config.trainer_options, run_dir),  # checked against Trainer's signature; none above
        )
    # Each process takes its share of an epoch's meta-batches; an interval longer than that share makes
    # Lightning warn about a setting the user never chose.
    share = -(-config.epoch_length // trainer.world_size)
    trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, share))
    return trainer


@contextmanager
def _trainer_options_blamed(config: RunConfig):
    """A value Lightning rejects among --trainer-opt's (e.g. limit_train_batches=2.5): one line, not a traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (MisconfigurationException, ValueError, TypeError) as exc:
        if not config.trainer_options:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in config.trainer_options.items())
        raise ConfigError(f"Lightning refused the trainer options ({given}): {' '.join(str(exc).split())}") from None


class _Prepared:
    """Everything a run needs, built and validated before any training."""

    def __init__(self, config: RunConfig, dataset=None, registry=None, splits=("train", "validation", "test")):
        from metareg.build import build_model, resolve_all
        from metareg.datamodule import EpisodeDataModule
        from metareg.plugins import get_plugins
        from metareg.registry import Registry
        from metareg.splits import FewShotDataset
        from metareg.strategy import TrainBatches

        self.registry = registry or Registry(get_plugins())
        self.components = resolve_all(config, self.registry, dataset=dataset is None)
        if dataset is None:
            dataset = self.components.dataset.build()
            if not isinstance(dataset, FewShotDataset):
                raise MetaregError(f"dataset {config.dataset!r} returned {type(dataset).__name__}, "
                                   "not a metareg.FewShotDataset")
        self.dataset = dataset
        self.datamodule = EpisodeDataModule(dataset, config,
                                            train_batches=TrainBatches.of(self.components.strategy.factory))
        self.datamodule.check(splits)
        _seed_everything(config.seed)
        self.strategy, self.transform, self.task = build_model(
            self.components, config, dataset.channels, dataset.image_size, dataset.train.num_classes,
            dataset_name=config.dataset, dataset_info=dataset.info,
        )


def train(config: RunConfig | dict | None = None, *, dataset=None, resume: bool = False, registry=None,
          announce: Callable[[str], Any] | None = None, callbacks=(), logger=None, **settings) -> RunResult:
    """Train, pick the best checkpoint on validation accuracy, and test it on fixed episodes.

    ``config`` is a :class:`RunConfig` or a dict of settings; keyword ``settings``
    override it. ``dataset`` is a registered name or a :class:`metareg.FewShotDataset`
    built in Python (e.g. ``FewShotDataset.from_arrays``). ``announce`` (e.g. ``print``)
    receives one line saying what is about to run, once everything is checked.
    Lightning's banners and library notices are hidden unless ``METAREG_VERBOSE=1``
    (see metareg.quiet). ``callbacks`` (Lightning callbacks) and ``logger`` (a Lightning logger or a
    list of them) join metareg's own in the training Trainer; ``trainer_options`` (a dict of
    ``Trainer`` arguments) and ``logger`` as a setting (``"tensorboard"``...) work as on the command line.
    """
    from metareg.learner import MetaLearner
    from metareg.trainer_options import check_logger

    if logger is not None and not isinstance(logger, str):
        user_loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    else:
        user_loggers = []
        if logger is not None:
            settings["logger"] = logger

    if isinstance(dataset, str):  # a registered name, like the other settings
        settings["dataset"], dataset = dataset, None
    if isinstance(config, RunConfig):
        config = config.replace(**settings) if settings else config
    else:
        config = RunConfig.from_sources(config or {}, settings)
    if dataset is not None:
        config = config.replace(dataset=dataset.name)
    check_hardware(config)  # before any work: a missing GPU or cluster fails late, or hangs, in Lightning
    check_logger(config.logger)  # here, not in RunConfig: `metareg eval` of a tensorboard run needs no tensorboard
    run_dir = _run_dir(config, resume)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        _check_resume(run_dir, last, config)
    prepared = _Prepared(config, dataset, registry)
    learner = MetaLearner(prepared.strategy, prepared.transform, config, prepared.task, config.dataset,
                          getattr(prepared.dataset, "info", {}))
    trainer = _trainer(config, run_dir, fit=True, resume=resume, user_callbacks=callbacks, user_loggers=user_loggers)
    prepared.datamodule.check_world_size(trainer.world_size)
    if trainer.world_size > 1 and not any(p.requires_grad for p in learner.parameters()):
        raise ConfigError(
            f"nothing is trainable when training starts (the backbone is frozen by its finetune option and "
            f"strategy {config.strategy!r} has no parameters of its own), and distributed training (DDP) cannot "
            f"wrap a model without trainable parameters. Train on one device (--devices 1), unfreeze from the "
            f"start (--backbone-opt finetune=no_freeze or unfreeze_epoch=0), or use a strategy with parameters "
            f"of its own such as maml"
        )
    # Processes that Lightning launches find the directory in the environment and write into it under
    # their parent's claim; claiming it themselves would be refused.
    claim = RunDir.joined(run_dir, "run") if launched_worker() else RunDir.claim(run_dir, "run", resume=resume)
    try:
        if announce is not None and trainer.global_rank == 0:
            announce(_start_line("resuming" if resume else "training", config, run_dir, trainer))
        return _train_claimed(config, prepared, learner, trainer, claim, resume)
    finally:
        claim.release()


def _train_claimed(config: RunConfig, prepared: _Prepared, learner, trainer, claim: RunDir,
                   resume: bool) -> RunResult:
    from metareg.quiet import quiet

    run_dir = claim.path
    last = run_dir / "checkpoints" / "last.ckpt"
    from_checkpoint = resume and last.is_file()
    if resume and not from_checkpoint and trainer.global_rank == 0:
        sys.stderr.write(f"note: {str(run_dir)!r} saved no checkpoint before it stopped; starting it again\n")
        _forget_outputs(run_dir)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by processes that Lightning launches
    if trainer.global_rank == 0:
        atomic_write(run_dir / "config.yaml", config.to_yaml())
    learner.report_dir = run_dir
    start = time.perf_counter()
    with quiet():
        trainer.fit(learner, datamodule=prepared.datamodule, ckpt_path=str(last) if from_checkpoint else None,
                    weights_only=True if from_checkpoint else None)
    train_seconds = time.perf_counter() - start
    best = _best_checkpoint(trainer, run_dir)
    if trainer.fast_dev_run and not best.is_file():
        best = None  # --trainer-opt fast_dev_run saves no checkpoint: test the weights in memory
    # A separate trainer without a logger: a second logger would rewrite metrics.csv.
    tester = _trainer(config, None, fit=False)
    with quiet():
        tester.test(learner, datamodule=prepared.datamodule, ckpt_path=str(best) if best else None,
                    weights_only=True if best else None, verbose=False)
    if trainer.global_rank != 0:
        return None  # type: ignore[return-value] - only the first process reports
    result = _finish(run_dir, config, prepared.registry.plugins, extra={
        "train_seconds": round(train_seconds, 2),
        "best_checkpoint": best.relative_to(run_dir).as_posix() if best else None,  # relative: valid when moved
        "resumed": resume,
    })
    _learning_curve(run_dir)
    result.best_checkpoint = best
    return result


def _start_line(doing: str, config: RunConfig, run_dir: Path, trainer, *, training: bool = True) -> str:
    """One line: what runs, on which episodes and devices, and where its files go."""
    def n(count: int, noun: str, plural: str | None = None) -> str:
        return f"{count} {noun if count == 1 else plural or noun + 's'}"

    parts = [f"{doing}: {config.strategy} + {config.backbone} on {config.dataset}"
             + (f", transform {config.transform}" if training else "")]
    if training:
        budget = (n(config.max_steps, "step") if config.max_steps > 0
                  else f"{n(config.max_epochs, 'epoch')} of {n(config.epoch_length, 'step')}")
        parts.append(f"{config.ways}-way {config.shots}-shot, {n(config.queries, 'query', 'queries')}, "
                     f"{n(config.meta_batch_size, 'episode')}/step, {budget}")
    parts.append(f"test: {n(config.test_num_tasks, 'episode')}, {config.eval_ways}-way {config.eval_shots}-shot, "
                 f"{n(config.eval_queries, 'query', 'queries')}")
    device = trainer.strategy.root_device.type
    parts.append(device if trainer.world_size == 1 else f"{trainer.world_size} x {device} ({config.trainer_strategy})")
    parts.append(str(run_dir))
    return " | ".join(parts)


def _check_resume(run_dir: Path, last: Path, config: RunConfig) -> None:
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


def _forget_outputs(run_dir: Path) -> None:
    """Outputs of an attempt that saved no checkpoint: they belong to no run that can continue."""
    for stale in [*run_dir.glob("checkpoints/*.ckpt"), *(run_dir / n for n in ("metrics.csv", "test_episodes.csv",
                                                                           "summary.json", "learning_curve.png"))]:
        stale.unlink(missing_ok=True)


# Settings that may differ when a run is resumed (they do not change what was computed so far).
RESUMABLE = frozenset({"max_epochs", "max_steps", "progress", "devices", "accelerator", "num_nodes",
                       "trainer_strategy", "output_dir", "test_num_tasks", "test_ways", "test_shots", "test_queries",
                       "eval_meta_batch_size", "logger"})
# What a finished run was tested with; changing them is a new evaluation (`metareg eval`), not a resume.
TEST_SETTINGS = ("test_ways", "test_shots", "test_queries", "test_num_tasks")
# The one list of settings `metareg eval` may change: its command-line options and its check both come from it.
EVAL_SETTINGS = frozenset({"test_ways", "test_shots", "test_queries", "test_num_tasks", "eval_meta_batch_size",
                           "seed", "dataset", "dataset_options", "accelerator", "devices", "precision",
                           "trainer_strategy", "num_nodes", "output_dir", "progress"})


def _best_checkpoint(trainer, run_dir: Path) -> Path:
    cb = trainer.checkpoint_callback
    best = getattr(cb, "best_model_path", "") if cb is not None else ""
    # Only a file of this run: RunCheckpoint re-anchors its paths to the run directory.
    if best and Path(best).is_file() and Path(best).resolve().parent == (run_dir / "checkpoints").resolve():
        return Path(best)
    candidates = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if candidates:
        return candidates[-1]
    return run_dir / "checkpoints" / "last.ckpt"


def _finish(run_dir: Path, config: RunConfig, plugins, extra: dict) -> RunResult:
    episodes = read_episodes(run_dir / "test_episodes.csv")
    report = summarise(episodes.values(), config.eval_ways, config.eval_shots, config.eval_queries)
    summary = {
        **report.as_dict(),
        "line": report.line(),
        "seed": config.seed,
        "dataset": config.dataset,
        "backbone": config.backbone,
        "transform": config.transform,
        "strategy": config.strategy,
        **extra,
        **_provenance(run_dir, config),
        "versions": _versions(plugins),
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, report, summary)


def _provenance(run_dir: Path, config: RunConfig) -> dict:
    from metareg import provenance
    from metareg.rundir import holder

    # From claiming the directory (this invocation; a resumed run counts its last session) to its summary.
    started = (holder(run_dir) or {}).get("started")
    return {
        "wall_seconds": round(time.time() - started, 2) if isinstance(started, (int, float)) else None,
        "device": provenance.device(config),
        "options": provenance.component_options(config),
        "git": provenance.git_commit(),
    }


def _learning_curve(run_dir: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, val_steps, val_acc = [], [], [], []
    if not (run_dir / "metrics.csv").is_file():  # nothing was logged (a launched process, or no step at all)
        return
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train_loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train_loss"]))
            if row.get("val_acc"):
                val_steps.append(int(row["step"]))
                val_acc.append(100 * float(row["val_acc"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(val_steps, val_acc, "o-", color="tab:orange", label="validation accuracy")
    ax2.set_ylabel("validation accuracy (%)", color="tab:orange")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    with atomic_output(run_dir / "learning_curve.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def evaluate(checkpoint: str | Path, *, dataset=None, output_dir: str | Path | None = None, registry=None,
             announce: Callable[[str], Any] | None = None, **overrides) -> RunResult:
    """Re-evaluate a saved model on fixed seeded test episodes (``metareg eval``).

    ``overrides`` may change test_ways / test_shots / test_queries / test_num_tasks,
    seed, dataset / dataset_options and hardware settings. ``announce`` as for :func:`train`.
    """
    from metareg.checkpoint import read_checkpoint
    from metareg.learner import MetaLearner
    from metareg.model_loading import load_model
    from metareg.quiet import quiet

    checkpoint = Path(checkpoint)
    if isinstance(dataset, str):  # a registered name, like the other settings
        overrides["dataset"], dataset = dataset, None
    meta = read_checkpoint(checkpoint)["metareg"]
    bad = sorted(set(overrides) - EVAL_SETTINGS)
    if bad:
        raise ConfigError(f"metareg eval cannot change {', '.join(bad)}; "
                          f"it may change {', '.join(sorted(EVAL_SETTINGS))}")
    config = RunConfig.from_saved(meta["config"], str(checkpoint),
                                  {k: v for k, v in overrides.items() if v is not None})
    check_hardware(config)
    if dataset is not None:
        config = config.replace(dataset=dataset.name)
    worker = launched_worker() and os.environ.get(RUN_DIR_ENV)
    if worker:
        run_dir = Path(os.environ[RUN_DIR_ENV])
    else:
        if output_dir is None:
            # Beside the run's own files, in a directory of its own; never into them.
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
            base = run if run is not None and read_marker(run) == "run" else Path("runs")
            output_dir = unique(base / f"eval-{stamp}-{config.eval_ways}w{config.eval_shots}s")
        run_dir = Path(output_dir).resolve()
        check(run_dir, "eval")
    model = load_model(checkpoint, registry)
    prepared_dataset = dataset
    from metareg.build import resolve
    from metareg.datamodule import EpisodeDataModule
    from metareg.plugins import get_plugins
    from metareg.registry import Registry

    registry = registry or Registry(get_plugins())
    if prepared_dataset is None:
        prepared_dataset = resolve(registry, "datasets", config.dataset, config.dataset_options).build()
    if (prepared_dataset.channels, prepared_dataset.image_size) != (model.channels, model.image_size):
        raise ConfigError(
            f"dataset {config.dataset!r} has {prepared_dataset.channels}x{prepared_dataset.image_size}px images but "
            f"the model was trained on {model.channels}x{model.image_size}px; set the dataset's image_size option"
        )
    datamodule = EpisodeDataModule(prepared_dataset, config)
    datamodule.check(("test",))
    learner = MetaLearner(model.strategy, model.transform, config, model.task, config.dataset,
                          meta["data"].get("info", {}))
    learner.report_dir = run_dir
    trainer = _trainer(config, None, fit=False)
    claim = RunDir.joined(run_dir, "eval") if worker else RunDir.claim(run_dir, "eval")
    try:
        if announce is not None and trainer.global_rank == 0:
            announce(_start_line(f"evaluating {checkpoint}", config, run_dir, trainer, training=False))
        os.environ[RUN_DIR_ENV] = str(run_dir)
        if trainer.global_rank == 0:
            atomic_write(run_dir / "config.yaml", config.to_yaml())
        with quiet():
            trainer.test(learner, datamodule=datamodule, verbose=False)
        if trainer.global_rank != 0:
            return None  # type: ignore[return-value]
        return _finish(run_dir, config, registry.plugins, extra={"checkpoint": str(checkpoint.resolve())})
    finally:
        claim.release()


__all__ = ["RunResult", "train", "evaluate", "CheckpointError", "EVAL_SETTINGS"]
