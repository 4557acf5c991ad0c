"""Whether this machine can run a RunConfig's hardware settings, checked before any work starts.

Lightning finds these out late: an unavailable accelerator or an unknown
``--trainer-strategy`` raises a traceback once the dataset is loaded, and
``--num-nodes 2`` without a cluster environment waits forever in the process-group
rendezvous for nodes that will never come. :func:`check` refuses each with one line.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Mapping

from metareg.errors import ConfigError

# How Lightning learns the node's rank and the rendezvous address, in the order it looks
# (lightning_fabric.plugins.environments): (launcher, environment variables that identify it).
CLUSTER_LAUNCHERS = (
    ("torchrun / torchelastic", ("TORCHELASTIC_RUN_ID",)),
    ("SLURM (srun)", ("SLURM_NTASKS",)),
    ("LSF (jsrun)", ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE")),
    ("MPI (mpirun with mpi4py)", ("OMPI_COMM_WORLD_SIZE",)),
)
# Where each launcher tells a process its global rank and the job's process count (what Lightning's
# environment of the same launcher reads). Lightning's own environment (MASTER_ADDR and NODE_RANK, or a
# single machine) has neither: its first process starts the others on its node.
RANK_AND_SIZE = {
    "torchrun / torchelastic": ("RANK", "WORLD_SIZE"),
    "SLURM (srun)": ("SLURM_PROCID", "SLURM_NTASKS"),
    "LSF (jsrun)": ("JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE"),
    "MPI (mpirun with mpi4py)": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
}


def check(config) -> None:
    """Raise :class:`ConfigError` if ``config``'s accelerator, devices, trainer strategy or nodes cannot run here."""
    check_trainer_strategy(config.trainer_strategy)
    check_accelerator(config.accelerator, config.devices_value())
    check_nodes(config.num_nodes)


def cluster_launcher(environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher that started this process on a cluster, or None (a plain process on one machine)."""
    environ = os.environ if environ is None else environ
    for name, variables in CLUSTER_LAUNCHERS:
        if all(v in environ for v in variables):
            if name.startswith("SLURM") and environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
                continue  # Lightning ignores SLURM in an interactive allocation
            if name.startswith("MPI") and importlib.util.find_spec("mpi4py") is None:
                continue
            return name
    if "MASTER_ADDR" in environ and ("NODE_RANK" in environ or "GROUP_RANK" in environ):
        return "MASTER_ADDR and NODE_RANK"
    return None


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, "0") or 0)
    except ValueError:
        return 0


def first_process(environ: Mapping[str, str] | None = None) -> bool:
    """True in the process of global rank 0 (or a process on its own), false in every other process of a job.

    Read from the environment before Lightning starts, as Lightning's cluster environments read it: the
    launcher's rank variable, else Lightning's own (``NODE_RANK`` or torchrun's ``GROUP_RANK``, ``LOCAL_RANK``).
    """
    environ = os.environ if environ is None else environ
    launcher = cluster_launcher(environ)
    if launcher in RANK_AND_SIZE:
        return _int(environ, RANK_AND_SIZE[launcher][0]) == 0
    node = _int(environ, "NODE_RANK") if "NODE_RANK" in environ else _int(environ, "GROUP_RANK")
    return node == 0 and _int(environ, "LOCAL_RANK") == 0


def started_separately(num_nodes: int, environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher, when this job's processes are started apart from this one (other nodes, or a launcher
    that starts one process per device), so that nothing but the command line can tell them where to write;
    None when this process is alone or starts the others itself (Lightning's launcher on one machine)."""
    environ = os.environ if environ is None else environ
    launcher = cluster_launcher(environ)
    if launcher is None:
        return None
    size = _int(environ, RANK_AND_SIZE[launcher][1]) if launcher in RANK_AND_SIZE else 1
    return launcher if num_nodes > 1 or size > 1 else None


def check_nodes(num_nodes: int, environ: Mapping[str, str] | None = None) -> None:
    if num_nodes <= 1 or cluster_launcher(environ) is not None:
        return
    raise ConfigError(
        f"num_nodes {num_nodes} needs a cluster environment, and this process has none: it was not started by "
        "torchrun, srun (SLURM), jsrun (LSF) or mpirun, and MASTER_ADDR and NODE_RANK are not set, so it would "
        "wait forever for the other nodes. Start the same command on every node through one of those launchers, "
        f"or set MASTER_ADDR, MASTER_PORT and NODE_RANK (0..{num_nodes - 1}) on each; or use --num-nodes 1"
    )


def check_trainer_strategy(name: str) -> None:
    if name == "auto":
        return
    from pytorch_lightning.strategies import StrategyRegistry

    known = sorted(StrategyRegistry.available_strategies())
    if name.lower() not in known:
        close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        main = [k for k in known if "find_unused_parameters" not in k]
        raise ConfigError(
            f"trainer_strategy {name!r} is not one of Lightning's strategies.{hint} Choose auto or one of "
            f"{', '.join(main)} (the ddp ones also as NAME_find_unused_parameters_true)"
        )
    for prefix, package, install in (("deepspeed", "deepspeed", "pip install deepspeed"),
                                     ("xla", "torch_xla", "pip install torch_xla"),
                                     ("single_xla", "torch_xla", "pip install torch_xla"),
                                     ("single_tpu", "torch_xla", "pip install torch_xla")):
        if name.lower().startswith(prefix) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"trainer_strategy {name!r} needs the {package} package, which is not installed "
                              f"({install}), or choose another strategy such as ddp")


def _cuda_count() -> int:
    # Lightning's count does not initialise CUDA, so ddp_fork can still fork afterwards.
    from lightning_fabric.accelerators.cuda import num_cuda_devices

    return num_cuda_devices()


def _mps_available() -> bool:
    from lightning_fabric.accelerators.mps import MPSAccelerator

    return MPSAccelerator.is_available()


def _xla_available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def check_accelerator(accelerator: str, devices: int | str | list[int]) -> None:
    if accelerator in ("auto", "cpu"):
        return
    if accelerator == "tpu":
        if not _xla_available():
            raise ConfigError("accelerator 'tpu' needs torch_xla and a TPU, and torch_xla is not installed; "
                              "use --accelerator cpu, or auto to take whatever this machine has")
        return
    if accelerator == "mps" or (accelerator == "gpu" and _cuda_count() == 0 and _mps_available()):
        if not _mps_available():
            raise ConfigError("accelerator 'mps' needs an Apple-silicon GPU, and none is available here; "
                              "use --accelerator cpu, or auto to take whatever this machine has")
        return
    count = _cuda_count()
    if count == 0:
        import torch

        why = ("this torch build has no CUDA support" if torch.version.cuda is None else
               f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device: check the driver and "
               "CUDA_VISIBLE_DEVICES")
        raise ConfigError(f"accelerator {accelerator!r} needs a GPU, and this machine has none that torch can use "
                          f"({why}); use --accelerator cpu, or auto to take a GPU only when there is one")
    wanted = devices if isinstance(devices, list) else list(range(devices)) if isinstance(devices, int) else []
    beyond = [d for d in wanted if d >= count]
    if beyond:
        asked = f"GPU ids {devices}" if isinstance(devices, list) else f"{devices} GPUs"
        raise ConfigError(f"devices asks for {asked}, and this machine has {count} (ids 0..{count - 1}); "
                          f"pass --devices {count} or fewer, or --devices auto")
