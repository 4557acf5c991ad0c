"""The Lightning ``Trainer`` of a run: metareg's callbacks, loggers and settings, checked before any work.

A training trainer writes the run directory's checkpoints (best on validation accuracy and
``last.ckpt``) and ``metrics.csv`` (plus the ``--logger`` one); a testing trainer has no logger,
since a second one would rewrite ``metrics.csv``.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from metareg.config import RunConfig
from metareg.errors import ConfigError


def make_trainer(config: RunConfig, run_dir: Path | None, *, fit: bool, resume: bool = False,
                 user_callbacks=(), user_loggers=()):
    """A trainer that fits into ``run_dir`` (``fit=True``) or only tests (``run_dir`` None, no logger)."""
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
    with quiet(), trainer_options_blamed(config):
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
def trainer_options_blamed(config: RunConfig):
    """A value Lightning rejects among --trainer-opt's (e.g. limit_train_batches=2.5): one line, not a traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (MisconfigurationException, ValueError, TypeError) as exc:
        if not config.trainer_options:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in config.trainer_options.items())
        raise ConfigError(f"Lightning refused the trainer options ({given}): {' '.join(str(exc).split())}") from None
