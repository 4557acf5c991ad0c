"""What a run prints: a start line, the progress bar and the result; ``-v`` shows everything.

The rule for what is hidden (unless ``metareg -v`` / ``METAREG_VERBOSE=1``):

- **Lightning's info log** (level INFO of the ``pytorch_lightning`` / ``lightning_fabric``
  loggers): the "GPU available" / "TPU available" banners, "💡 Tip" adverts, "LOCAL_RANK",
  "Initializing distributed", "Restoring states from the checkpoint", "`Trainer.fit` stopped",
  seed messages. They describe what metareg set up, not something the user got wrong; the
  start line says what matters (components, episodes, devices). Lightning's WARNING-level
  records still show.
- **Deprecation notices about library code**: ``DeprecationWarning`` / ``FutureWarning``
  attributed to a module of torch, Lightning, torchvision, torchmetrics, kornia, learn2learn,
  numpy or matplotlib (torch's LeafSpec, ``all_gather``, ...). The user can do nothing about
  them; the library's maintainers can. The same warnings attributed to metareg or to a
  plugin's module still show: that is code someone reading the output can change.
- **Lightning's advice about choices metareg makes on the user's behalf** (:data:`NOISE`):
  data-loader workers, the run directory it manages, how test episodes are spread over
  processes, the test trainer deliberately built without checkpoint callbacks. Each is
  listed with the reason it does not apply.

Everything else shows, in particular every warning that concerns the user's settings:
metareg's own and its plugins' ``UserWarning`` messages about options, and Lightning's warnings about
what the user asked for (a precision the device cannot do, a GPU left unused, a logging
interval longer than an epoch when the user chose the interval). Where a Lightning warning
was caused by a default of metareg's, the default is fixed rather than the warning hidden
(``lightning_trainer.make_trainer`` fits the logging interval to each process's share of an epoch).

One switch, ``METAREG_VERBOSE``, in the environment so that processes Lightning launches inherit it
(set by ``metareg -v``, cli.py). Only runs and evaluations import this module: it needs Lightning.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager

import pytorch_lightning as pl

VERBOSE_ENV = "METAREG_VERBOSE"

# Lightning 2.x ships as `pytorch_lightning` + `lightning_fabric`, and as the unified `lightning` package.
LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")

LIBRARIES = (r"(torch|torchvision|torchmetrics|pytorch_lightning|lightning_fabric|lightning|lightning_utilities"
             r"|kornia|learn2learn|numpy|matplotlib)(\.|$)")

# Lightning's advice on settings that metareg, not the user, chose: (message regex, why it does not apply).
NOISE = (
    (r".*does not have many workers", "episodes are index tensors sampled in the main process (datamodule.py)"),
    (r".*exists and is not empty", "metareg claims and manages the run directory (rundir.py)"),
    (r".*overridden `on_after_batch_transfer`", "the learner's hook is the one meant to run (learner.py)"),
    (r".*Using `DistributedSampler` with the dataloaders\. During `trainer\.test\(\)`",
     "test episodes are gathered per episode and padding dropped (learner.py, tested in test_ddp.py)"),
    (r".*callbacks used to create the checkpoint",
     "the test trainer is built without checkpoint callbacks on purpose: it only reads the weights"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}  # as METAREG_STRICT


def _filter_warnings() -> None:
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    for pattern, _why in NOISE:
        warnings.filterwarnings("ignore", message=pattern)


@contextmanager
def quiet():
    """Hide the noise described in the module docstring while the block runs (nothing with -v)."""
    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        with warnings.catch_warnings():
            _filter_warnings()
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quiet_spawned_process() -> None:
    """The same filters, for good, in a process that exists only to run a trainer (``ddp_spawn``).

    Such a process starts from a fresh interpreter: the parent's filters do not reach it.
    """
    if verbose():
        return
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _filter_warnings()


class QuietWorkers(pl.Callback):
    """Quiets the processes ``ddp_spawn`` starts, as they unpickle the trainer that holds it.

    Unpickling is the first thing such a process does with metareg's objects: before it sets up
    the process group (which logs "Initializing distributed") and long before any callback hook.
    """

    def __getstate__(self):
        return {**self.__dict__, "pickled_in": os.getpid()}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state.get("pickled_in") != os.getpid():  # another process, not a deepcopy in the user's own
            quiet_spawned_process()
