"""Training and evaluation runs: the Python API behind `metareg run` and `metareg eval`.

Run directory layout::

    RUN/config.yaml          resolved settings (re-run with `metareg run --config RUN/config.yaml`)
    RUN/metrics.csv          Lightning's CSV log: train loss/accuracy per step, val_acc per epoch
    RUN/checkpoints/         last.ckpt and best-*.ckpt (best validation accuracy)
    RUN/test_episodes.csv    accuracy of every fixed test episode
    RUN/summary.json         accuracy, 95% CI, episodes, seed, wall time, device, options, git commit, versions
    RUN/learning_curve.png   training loss, training and validation accuracy
    RUN/report.html          the result, the settings and the curves in one self-contained page
    RUN/.metareg-run         marks the directory as a metareg run (see metareg.rundir)
    RUN/.metareg-lock        held (flock) by the process that runs it
    RUN/eval-*/              `metareg eval` results, each in a directory of its own

Both start from :func:`metareg.prepare` (metareg.preparation) and end the same way: test on
the fixed episodes, summary.json (metareg.run_summary), report.html (metareg.run_report).
A run directory is claimed before anything is written (metareg.rundir), every file is
written atomically (metareg.files), and everything the run records about its own files
is relative to it, so a copied or moved run resumes and evaluates from its own files.

Re-entrancy: Lightning's ``ddp`` launcher re-executes the command line in each
process. The first process picks the run directory and exports it as
``METAREG_RUN_DIR``; the processes it launches (``LOCAL_RANK`` > 0 or
``NODE_RANK`` > 0) read it back, so every process writes to the same place.
Processes started apart from the first (torchrun, srun, the other nodes of a
multi-node job) take the same ``--output-dir`` without claiming it (a job without
one is refused in every process); only global rank 0 writes there.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from metareg.config import RunConfig
from metareg.errors import ConfigError
from metareg.evaluation import Report, episode_table, read_episodes
from metareg.files import atomic_write
from metareg.hardware import check as check_hardware
from metareg.hardware import started_separately
from metareg.lightning_trainer import make_trainer
from metareg.preparation import Prepared, prepare, run_config
from metareg.run_settings import check_eval_settings, check_resume
from metareg.rundir import RunDir, check, launched_worker, read_marker, unique

RUN_DIR_ENV = "METAREG_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    report: Report
    summary: dict[str, Any]
    best_checkpoint: Path | None = None


def _joined_dir(num_nodes: int, output_dir) -> Path | None:
    """Where a process that is not its job's first writes: the directory the first one claims (None in the first).

    Processes that Lightning's launcher starts inherit it (METAREG_RUN_DIR); those started apart from the
    first (torchrun, srun, another node) can only agree with it on the same --output-dir.
    """
    inherited = launched_worker() and os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    launcher = started_separately(num_nodes)
    if launcher and not output_dir:
        # Refused in every process, the first included: it would otherwise wait for the others for ever.
        raise ConfigError(
            f"this process is one of a job started by {launcher}, whose processes each choose a run directory "
            "from the command line alone: pass the same --output-dir to every process (on a filesystem that "
            "every node shares)"
        )
    if launched_worker() and output_dir:
        return Path(output_dir).resolve()  # the first process checks and claims it; checking here would race
    return None


def _run_dir(config: RunConfig, resume: bool) -> Path:
    joined = _joined_dir(config.num_nodes, config.output_dir)
    if joined is not None:
        return joined
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
    ``registry`` (default: the installed plugins, ``Registry.current()``) resolves the component names.
    """
    from metareg.registry import Registry
    from metareg.trainer_options import check_logger

    if logger is not None and not isinstance(logger, str):
        user_loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    else:
        user_loggers = []
        if logger is not None:
            settings["logger"] = logger
    config, dataset = run_config(config, dataset, settings)
    check_hardware(config)  # before any work: a missing GPU or cluster fails late, or hangs, in Lightning
    check_logger(config.logger)  # here, not in RunConfig: `metareg eval` of a tensorboard run needs no tensorboard
    run_dir = _run_dir(config, resume)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and last.is_file():
        check_resume(run_dir, last, config)
    prepared = prepare(config, registry or Registry.current(), dataset)
    trainer = make_trainer(config, run_dir, fit=True, resume=resume, user_callbacks=callbacks,
                           user_loggers=user_loggers)
    prepared.datamodule.check_world_size(trainer.world_size)
    if trainer.world_size > 1 and not any(p.requires_grad for p in prepared.learner.parameters()):
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
        return _train_claimed(prepared, trainer, claim, resume)
    finally:
        claim.release()


def _train_claimed(prepared: Prepared, trainer, claim: RunDir, resume: bool) -> RunResult:
    from metareg.quiet import quiet

    config, run_dir = prepared.config, claim.path
    last = run_dir / "checkpoints" / "last.ckpt"
    from_checkpoint = resume and last.is_file()
    if resume and not from_checkpoint and trainer.global_rank == 0:
        sys.stderr.write(f"note: {str(run_dir)!r} saved no checkpoint before it stopped; starting it again\n")
        _forget_outputs(run_dir)
    _enter(run_dir, prepared, trainer)
    start = time.perf_counter()
    with quiet():
        trainer.fit(prepared.learner, datamodule=prepared.datamodule,
                    ckpt_path=str(last) if from_checkpoint else None, weights_only=True if from_checkpoint else None)
    train_seconds = time.perf_counter() - start
    best = _best_checkpoint(trainer, run_dir)
    if trainer.fast_dev_run and not best.is_file():
        best = None  # --trainer-opt fast_dev_run saves no checkpoint: test the weights in memory
    # A separate trainer without a logger: a second logger would rewrite metrics.csv.
    result = _test(prepared, make_trainer(config, None, fit=False), run_dir, best, extra={
        "train_seconds": round(train_seconds, 2),
        "best_checkpoint": best.relative_to(run_dir).as_posix() if best else None,  # relative: valid when moved
        "resumed": resume,
    })
    if result is not None:
        result.best_checkpoint = best
    return result


def _enter(run_dir: Path, prepared: Prepared, trainer) -> None:
    """Point every process at the claimed directory and record the settings it runs with."""
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by processes that Lightning launches
    if trainer.global_rank == 0:
        atomic_write(run_dir / "config.yaml", prepared.config.to_yaml())
    prepared.learner.report_dir = run_dir  # where the first process writes test_episodes.csv


def _test(prepared: Prepared, tester, run_dir: Path, checkpoint: Path | None, extra: dict,
          *, trained: bool = True) -> RunResult | None:
    """Test on the fixed episodes, then summary.json, the learning curve and report.html (first process only)."""
    from metareg.quiet import quiet
    from metareg.run_report import learning_curve, write_report
    from metareg.run_summary import finish

    with quiet():
        tester.test(prepared.learner, datamodule=prepared.datamodule, ckpt_path=str(checkpoint) if checkpoint else None,
                    weights_only=True if checkpoint else None, verbose=False)
    if tester.global_rank != 0:
        return None  # only the first process reports
    results = prepared.learner.test_results
    # Under ddp_spawn the test ran in processes that are gone; the first of them wrote the episodes' file.
    accuracies = (episode_table(*results, prepared.learner.sources) if results is not None
                  else read_episodes(run_dir / "test_episodes.csv"))  # keyed by (source, episode) with several
    report, summary = finish(run_dir, prepared.config, prepared.registry.plugins, accuracies, extra)
    if trained:
        png, missing = learning_curve(run_dir)
    else:
        png, missing = None, ("this directory holds an evaluation of a trained model; its training curves are in "
                              "the report of the run that trained it")
    write_report(run_dir, summary, png, missing)
    return RunResult(run_dir, report, summary)


# What the start line says of --episodes variable (metareg.variable_episodes).
VARIABLE_SHAPE = "variable episodes (Meta-Dataset: 5-50 ways, imbalanced shots, up to 10 queries per class)"


def _start_line(doing: str, config: RunConfig, run_dir: Path, trainer, *, training: bool = True) -> str:
    """One line: what runs, on which episodes and devices, and where its files go."""
    def n(count: int, noun: str, plural: str | None = None) -> str:
        return f"{count} {noun if count == 1 else plural or noun + 's'}"

    parts = [f"{doing}: {config.strategy} + {config.backbone} on {config.dataset}"
             + (f", transform {config.transform}" if training else "")]
    if training:
        budget = (n(config.max_steps, "step") if config.max_steps > 0
                  else f"{n(config.max_epochs, 'epoch')} of {n(config.epoch_length, 'step')}")
        shape = (VARIABLE_SHAPE if config.episodes == "variable" else
                 f"{config.ways}-way {config.shots}-shot, {n(config.queries, 'query', 'queries')}")
        parts.append(f"{shape}, {n(config.meta_batch_size, 'episode')}/step, {budget}")
    shape = (VARIABLE_SHAPE if config.episodes == "variable" else
             f"{config.eval_ways}-way {config.eval_shots}-shot, {n(config.eval_queries, 'query', 'queries')}")
    parts.append(f"test: {n(config.test_num_tasks, 'episode')}, {shape}")
    device = trainer.strategy.root_device.type
    parts.append(device if trainer.world_size == 1 else f"{trainer.world_size} x {device} ({config.trainer_strategy})")
    parts.append(str(run_dir))
    return " | ".join(parts)


def _forget_outputs(run_dir: Path) -> None:
    """Outputs of an attempt that saved no checkpoint: they belong to no run that can continue."""
    for stale in [*run_dir.glob("checkpoints/*.ckpt"), *(run_dir / n for n in (
            "metrics.csv", "test_episodes.csv", "summary.json", "learning_curve.png", "report.html"))]:
        stale.unlink(missing_ok=True)


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


def evaluate(checkpoint: str | Path, *, dataset=None, output_dir: str | Path | None = None, registry=None,
             announce: Callable[[str], Any] | None = None, **overrides) -> RunResult:
    """Re-evaluate a saved model on fixed seeded test episodes (``metareg eval``).

    ``overrides`` may change the settings in ``metareg.run_settings.EVAL_SETTINGS``: test_ways /
    test_shots / test_queries / test_num_tasks, seed, dataset / dataset_options and hardware settings.
    ``registry`` and ``announce`` as for :func:`train`.
    """
    from metareg.checkpoint import read_checkpoint
    from metareg.model_loading import load_model
    from metareg.registry import Registry
    from metareg.sources import retarget

    checkpoint = Path(checkpoint)
    if isinstance(dataset, str):  # a registered name, like the other settings
        overrides["dataset"], dataset = dataset, None
    meta = read_checkpoint(checkpoint)["metareg"]
    check_eval_settings(overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    # Other data than the model trained on (the cross-domain protocol): the training data's options stay behind.
    config = RunConfig.from_saved(retarget(meta["config"], given) if isinstance(meta["config"], dict)
                                  else meta["config"], str(checkpoint), given)
    check_hardware(config)
    config, dataset = run_config(config, dataset, {})
    worker = _joined_dir(config.num_nodes, output_dir)
    run_dir = worker or _eval_dir(checkpoint, config, output_dir)
    registry = registry or Registry.current()
    prepared = prepare(config, registry, dataset, model=load_model(checkpoint, registry))
    trainer = make_trainer(config, None, fit=False)
    claim = RunDir.joined(run_dir, "eval") if worker else RunDir.claim(run_dir, "eval")
    try:
        if announce is not None and trainer.global_rank == 0:
            announce(_start_line(f"evaluating {checkpoint}", config, run_dir, trainer, training=False))
        _enter(run_dir, prepared, trainer)
        return _test(prepared, trainer, run_dir, None, extra={"checkpoint": str(checkpoint.resolve())},
                     trained=False)
    finally:
        claim.release()


def _eval_dir(checkpoint: Path, config: RunConfig, output_dir: str | Path | None) -> Path:
    if output_dir is None:
        # Beside the run's own files, in a directory of its own; never into them.
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
        base = run if run is not None and read_marker(run) == "run" else Path("runs")
        output_dir = unique(base / f"eval-{stamp}-{config.eval_ways}w{config.eval_shots}s")
    run_dir = Path(output_dir).resolve()
    check(run_dir, "eval")  # read-only: refuse before any work starts
    return run_dir


__all__ = ["RunResult", "train", "evaluate"]
