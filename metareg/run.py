"""Training and evaluation runs: the Python API behind `metareg run` and `metareg eval`.

Run directory layout::

    RUN/config.yaml          resolved settings (re-run with `metareg run --config RUN/config.yaml`)
    RUN/metrics.csv          Lightning's CSV log: train loss/accuracy per step, val_acc per epoch
    RUN/checkpoints/         last.ckpt and best-*.ckpt (best validation accuracy)
    RUN/test_episodes.csv    accuracy of every fixed test episode
    RUN/summary.json         accuracy, 95% CI, episodes, seed, versions
    RUN/learning_curve.png

Re-entrancy: Lightning's ``ddp`` launcher re-executes the command line in each
process. The first process picks the run directory and exports it as
``METAREG_RUN_DIR``; the processes it launches (``LOCAL_RANK`` > 0 or
``NODE_RANK`` > 0) read it back, so every process writes to the same place.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from metareg.config import RunConfig
from metareg.errors import CheckpointError, ConfigError, MetaregError
from metareg.evaluation import Report, read_episodes, summarise

RUN_DIR_ENV = "METAREG_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    report: Report
    summary: dict[str, Any]
    best_checkpoint: Path | None = None


def _is_launched_worker() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 or int(os.environ.get("NODE_RANK", "0") or 0) > 0


def _run_dir(config: RunConfig, resume: bool) -> Path:
    if _is_launched_worker() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if config.output_dir:
        path = Path(config.output_dir)
    elif resume:
        raise ConfigError("--resume needs --output-dir: the run directory to continue")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stamp}-{config.strategy.replace(':', '_')}-{config.dataset.replace(':', '_')}"
        n = 1
        while path.exists():
            n += 1
            path = path.with_name(f"{path.name.split('~')[0]}~{n}")
    path = path.resolve()
    last = path / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"cannot resume: {str(last)!r} does not exist; start the run without --resume")
    if not resume and last.exists():
        raise ConfigError(
            f"{str(path)!r} already holds a run; pass --resume to continue it or choose another --output-dir "
            "(nothing was overwritten)"
        )
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


def _trainer(config: RunConfig, run_dir: Path | None, *, fit: bool):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    callbacks, logger = [], False
    if fit:
        # Best on validation accuracy, and last.ckpt after every epoch. Lightning's own save_last only
        # writes when the best improved, which would leave --resume an epoch or more behind.
        callbacks.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best-{epoch}-{val_acc:.4f}", monitor="val_acc", mode="max",
            save_top_k=1, auto_insert_metric_name=False,
        ))
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                                         enable_version_counter=False))
        logger = CSVLogger(str(run_dir), name="", version="")
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, config.epoch_length // 20)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        return pl.Trainer(
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
            log_every_n_steps=max(1, min(10, config.epoch_length)),
            default_root_dir=str(run_dir) if run_dir else None,
        )


class _Prepared:
    """Everything a run needs, built and validated before any training."""

    def __init__(self, config: RunConfig, dataset=None, registry=None, splits=("train", "validation", "test")):
        from metareg.build import build_model, resolve_all
        from metareg.datamodule import EpisodeDataModule
        from metareg.plugins import get_plugins
        from metareg.registry import Registry
        from metareg.splits import FewShotDataset

        self.registry = registry or Registry(get_plugins())
        self.components = resolve_all(config, self.registry, dataset=dataset is None)
        if dataset is None:
            dataset = self.components.dataset.build()
            if not isinstance(dataset, FewShotDataset):
                raise MetaregError(f"dataset {config.dataset!r} returned {type(dataset).__name__}, "
                                   "not a metareg.FewShotDataset")
        self.dataset = dataset
        labelled = getattr(self.components.strategy.factory, "train_batches", "episodes") == "labelled"
        self.datamodule = EpisodeDataModule(dataset, config, labelled=labelled)
        self.datamodule.check(splits)
        _seed_everything(config.seed)
        self.strategy, self.transform, self.task = build_model(
            self.components, config, dataset.channels, dataset.image_size, dataset.train.num_classes,
            dataset_name=config.dataset,
        )


def train(config: RunConfig | dict | None = None, *, dataset=None, resume: bool = False, registry=None,
          **settings) -> RunResult:
    """Train, pick the best checkpoint on validation accuracy, and test it on fixed episodes.

    ``config`` is a :class:`RunConfig` or a dict of settings; keyword ``settings``
    override it. ``dataset`` is a registered name or a :class:`metareg.FewShotDataset`
    built in Python (e.g. ``FewShotDataset.from_arrays``).
    """
    from metareg.learner import MetaLearner

    if isinstance(dataset, str):  # a registered name, like the other settings
        settings["dataset"], dataset = dataset, None
    if isinstance(config, RunConfig):
        config = config.replace(**settings) if settings else config
    else:
        config = RunConfig.from_sources(config or {}, settings)
    if dataset is not None:
        config = config.replace(dataset=dataset.name)
    run_dir = _run_dir(config, resume)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        from metareg.checkpoint import read_checkpoint

        saved = read_checkpoint(last)["metareg"]["config"]
        changed = {k for k in RunConfig.keys() if k not in _RESUMABLE and saved.get(k) != config.to_dict()[k]}
        if changed:
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with different settings: {', '.join(sorted(changed))} "
                f"differ from its config.yaml (only {', '.join(sorted(_RESUMABLE))} may change on resume)"
            )
    prepared = _Prepared(config, dataset, registry)
    learner = MetaLearner(prepared.strategy, prepared.transform, config, prepared.task, config.dataset,
                          getattr(prepared.dataset, "info", {}))
    trainer = _trainer(config, run_dir, fit=True)
    prepared.datamodule.check_world_size(trainer.world_size)
    if trainer.world_size > 1 and not any(p.requires_grad for p in learner.parameters()):
        raise ConfigError(
            f"nothing is trainable when training starts (the backbone is frozen by its finetune option and "
            f"strategy {config.strategy!r} has no parameters of its own), and distributed training (DDP) cannot "
            f"wrap a model without trainable parameters. Train on one device (--devices 1), unfreeze from the "
            f"start (--backbone-opt finetune=no_freeze or unfreeze_epoch=0), or use a strategy with parameters "
            f"of its own such as maml"
        )
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by processes that Lightning launches
    if trainer.global_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
    learner.report_dir = run_dir
    # Lightning's CSV logger starts metrics.csv afresh; keep the rows from before a resume.
    earlier_metrics = (run_dir / "metrics.csv").read_text() if resume and (run_dir / "metrics.csv").is_file() else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        trainer.fit(learner, datamodule=prepared.datamodule, ckpt_path=str(last) if resume else None,
                    weights_only=True if resume else None)
    train_seconds = time.perf_counter() - start
    if earlier_metrics is not None and trainer.global_rank == 0:
        _merge_metrics(run_dir / "metrics.csv", earlier_metrics)
    best = _best_checkpoint(trainer, run_dir)
    # A separate trainer without a logger: a second CSV logger would wipe metrics.csv.
    tester = _trainer(config, None, fit=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        warnings.filterwarnings("ignore", message=".*DistributedSampler.*")
        warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
        tester.test(learner, datamodule=prepared.datamodule, ckpt_path=str(best), weights_only=True, verbose=False)
    if trainer.global_rank != 0:
        return None  # type: ignore[return-value] - only the first process reports
    result = _finish(run_dir, config, prepared.registry.plugins, extra={
        "train_seconds": round(train_seconds, 2),
        "best_checkpoint": str(best),
        "resumed": resume,
    })
    _learning_curve(run_dir)
    result.best_checkpoint = best
    return result


# Settings that may differ when a run is resumed (they do not change what was computed so far).
_RESUMABLE = {"max_epochs", "max_steps", "progress", "devices", "accelerator", "num_nodes", "trainer_strategy",
              "output_dir", "test_num_tasks", "test_ways", "test_shots", "test_queries", "eval_meta_batch_size"}


def _merge_metrics(path: Path, earlier: str) -> None:
    """Rows logged before a resume, then the rows logged after it, under one header."""
    import csv
    import io

    old = list(csv.DictReader(io.StringIO(earlier)))
    new = list(csv.DictReader(open(path, newline=""))) if path.is_file() else []
    first_new = min((int(r["step"]) for r in new), default=None)
    rows = [r for r in old if first_new is None or int(r["step"]) < first_new] + new
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("epoch", "step"), k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _best_checkpoint(trainer, run_dir: Path) -> Path:
    cb = trainer.checkpoint_callback
    best = getattr(cb, "best_model_path", "") if cb is not None else ""
    if best and Path(best).is_file():
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
        "versions": _versions(plugins),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, report, summary)


def _learning_curve(run_dir: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, val_steps, val_acc = [], [], [], []
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
    fig.savefig(run_dir / "learning_curve.png", dpi=100)
    plt.close(fig)


def evaluate(checkpoint: str | Path, *, dataset=None, output_dir: str | Path | None = None, registry=None,
             **overrides) -> RunResult:
    """Re-evaluate a saved model on fixed seeded test episodes (``metareg eval``).

    ``overrides`` may change test_ways / test_shots / test_queries / test_num_tasks,
    seed, dataset / dataset_options and hardware settings.
    """
    from metareg.checkpoint import load_model, read_checkpoint
    from metareg.learner import MetaLearner

    checkpoint = Path(checkpoint)
    if isinstance(dataset, str):  # a registered name, like the other settings
        overrides["dataset"], dataset = dataset, None
    meta = read_checkpoint(checkpoint)["metareg"]
    allowed = _RESUMABLE | {"seed", "dataset", "dataset_options"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ConfigError(f"metareg eval cannot change {', '.join(bad)}; it may change {', '.join(sorted(allowed))}")
    config = RunConfig.from_sources(meta["config"], {k: v for k, v in overrides.items() if v is not None})
    if dataset is not None:
        config = config.replace(dataset=dataset.name)
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
    datamodule = EpisodeDataModule(prepared_dataset, config, labelled=True)
    datamodule.check(("test",))
    if output_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path("runs")
        output_dir = base / f"eval-{stamp}-{config.eval_ways}w{config.eval_shots}s"
    run_dir = Path(output_dir).resolve()
    if (run_dir / "summary.json").exists():
        raise ConfigError(f"{str(run_dir)!r} already holds results; choose another --output-dir")
    if _is_launched_worker() and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
    learner = MetaLearner(model.strategy, model.transform, config, model.task, config.dataset,
                          meta["data"].get("info", {}))
    learner.report_dir = run_dir
    trainer = _trainer(config, None, fit=False)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    if trainer.global_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config.to_yaml())
    trainer.test(learner, datamodule=datamodule, verbose=False)
    if trainer.global_rank != 0:
        return None  # type: ignore[return-value]
    return _finish(run_dir, config, registry.plugins, extra={"checkpoint": str(checkpoint.resolve())})


__all__ = ["RunResult", "train", "evaluate", "CheckpointError"]
