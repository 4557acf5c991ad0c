"""Lightning Trainer flags a run passes through (``--trainer-opt``, ``trainer_options:``) and its loggers.

Keys are checked against ``pytorch_lightning.Trainer.__init__``'s own signature, so a
flag Lightning adds works without a change here, and a misspelt one is refused before
any work instead of failing (or being dropped) inside Lightning. Flags that metareg
sets itself are refused with the metareg setting that controls them: two ways to set
one thing would disagree about which one wins.
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
from typing import Any

from metareg.errors import ConfigError

# Trainer arguments metareg fills in itself -> what the user sets instead.
RESERVED = {
    "accelerator": "--accelerator",
    "strategy": "--trainer-strategy",
    "devices": "--devices",
    "num_nodes": "--num-nodes",
    "precision": "--precision",
    "max_epochs": "--max-epochs",
    "max_steps": "--max-steps",
    "logger": "--logger (Python: metareg.train(logger=...))",
    "callbacks": "metareg.train(callbacks=[...]) in Python",
    "gradient_clip_val": "--gradient-clip-val",
    "enable_progress_bar": "--progress / --no-progress",
    "default_root_dir": "--output-dir",
    "enable_checkpointing": "nothing: metareg always saves last.ckpt and the best checkpoint, which it tests",
    "plugins": "nothing: metareg writes checkpoints atomically through its own checkpoint plugin",
    "inference_mode": "nothing: it stays off because MAML-style strategies adapt with gradients during evaluation",
    "num_sanity_val_steps": "nothing: metareg validates on its fixed episodes after each epoch",
    "log_every_n_steps": "nothing: metareg logs at an interval that fits --epoch-length",
    "enable_model_summary": "-v (metareg -v shows Lightning's model summary and banners)",
}

# --logger choice -> (module that must be importable, the pip package that provides it).
LOGGERS = {"csv": None, "tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
           "wandb": ("wandb", "wandb")}


def trainer_parameters() -> list[str]:
    import pytorch_lightning as pl

    return [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]


def scalar(value: Any) -> Any:
    """Text from the command line as the YAML scalar it spells (``4`` -> 4, ``0.5``, ``true``, ``none``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null", ""):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def validate(options: dict[str, Any]) -> dict[str, Any]:
    """Checked and converted trainer options; one :class:`ConfigError` line for the first bad key."""
    if not options:
        return {}
    known = trainer_parameters()
    out = {}
    for key, value in options.items():
        if key in RESERVED:
            raise ConfigError(f"trainer option {key!r} is set by metareg; use {RESERVED[key]} instead")
        if key not in known:
            close = difflib.get_close_matches(key, [k for k in known if k not in RESERVED], n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown trainer option {key!r}: pytorch_lightning.Trainer has no such argument.{hint}")
        out[key] = scalar(value)
        if key == "profiler" and not (out[key] is None or str(out[key]).lower() in PROFILERS):
            raise ConfigError(f"trainer option profiler={value!r} is not one of {', '.join(PROFILERS)}")
    return out


PROFILERS = ("simple", "advanced", "pytorch")


def for_trainer(options: dict[str, Any], run_dir) -> dict[str, Any]:
    """``options`` as Trainer arguments: a profiler named by text reports into the run directory.

    Lightning's own profiler prints its report through the logging that metareg quiets, so
    ``profiler=simple`` would show nothing; in the run directory it is ``fit-profile.txt``.
    """
    options = dict(options)
    name = options.get("profiler")
    if isinstance(name, str) and run_dir is not None:
        from pytorch_lightning import profilers

        kind = {"simple": profilers.SimpleProfiler, "advanced": profilers.AdvancedProfiler,
                "pytorch": profilers.PyTorchProfiler}[name.lower()]
        options["profiler"] = kind(dirpath=str(run_dir), filename="profile")
    return options


def check_logger(name: str) -> None:
    """Refuse a logger whose library is missing, saying what to install, before any work."""
    if name not in LOGGERS:
        raise ConfigError(f"logger {name!r} is not one of {', '.join(LOGGERS)}")
    need = LOGGERS[name]
    if need is not None and importlib.util.find_spec(need[0]) is None:
        raise ConfigError(f"--logger {name} needs the {need[1]!r} package, which is not installed; "
                          f"install it with `pip install {need[1]}` or use --logger csv")


def make_logger(name: str, run_dir):
    """The Lightning logger for ``--logger NAME`` that writes beside metrics.csv, or None for csv alone."""
    if name == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    if name == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        # A local file store inside the run keeps the run directory self-contained.
        return MLFlowLogger(experiment_name="metareg", run_name=run_dir.name,
                            tracking_uri=(run_dir / "mlruns").as_uri())
    if name == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        return WandbLogger(name=run_dir.name, save_dir=str(run_dir))
    return None
