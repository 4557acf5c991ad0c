"""RunConfig: every setting of a run, validated before any work starts.

Values come from defaults, then a YAML file (``--config``), then the command line;
later sources win. Unknown keys are errors with a suggestion, never ignored
(Flash silently dropped a misspelt ``num_task``).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from metareg.errors import ConfigError, OptionError
from metareg.options import _convert

OPTION_SECTIONS = ("dataset_options", "backbone_options", "transform_options", "strategy_options")


@dataclass
class RunConfig:
    """Settings of one ``metareg run``. Field names are the YAML keys; ``--some-name`` on the CLI."""

    # components (names or plugin:name) and their options
    dataset: str = "glyphs"
    backbone: str = "conv4"
    transform: str = "none"
    strategy: str = "prototypicalnetworks"
    dataset_options: dict = field(default_factory=dict)
    backbone_options: dict = field(default_factory=dict)
    transform_options: dict = field(default_factory=dict)
    strategy_options: dict = field(default_factory=dict)
    # episodes (Flash's names)
    ways: int = 5
    shots: int = 1
    queries: int = 5
    # The defaults train a Conv-4 on glyphs in a few minutes on a 2-core CPU (README).
    meta_batch_size: int = 8
    num_tasks: int = -1  # size of a fixed pool of training tasks; -1 draws a fresh task every time
    epoch_length: int = 75  # meta-batches per epoch
    test_ways: int | None = None  # None: same as ways
    test_shots: int | None = None
    test_queries: int | None = None
    test_num_tasks: int = 600
    val_num_tasks: int = 100
    eval_meta_batch_size: int = 25  # episodes per forward pass in validation and test
    # optimisation
    max_epochs: int = 4
    max_steps: int = -1
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = 10  # epochs between lr drops for scheduler=step
    gamma: float = 0.5
    gradient_clip_val: float | None = None
    seed: int = 0
    # hardware (Lightning's names; its `strategy` is `trainer_strategy` here)
    accelerator: str = "auto"
    devices: str = "1"
    precision: str = "32-true"
    # Conv weights in NHWC layout: 1.5x faster Conv-4 ProtoNet training on a 2-core CPU, 10% slower
    # for MAML (measured); unset (None) follows the strategy's `channels_last` preference.
    channels_last: bool | None = None
    trainer_strategy: str = "auto"
    num_nodes: int = 1
    # output
    output_dir: str | None = None
    progress: bool = True

    @property
    def eval_ways(self) -> int:
        return self.test_ways or self.ways

    @property
    def eval_shots(self) -> int:
        return self.test_shots or self.shots

    @property
    def eval_queries(self) -> int:
        return self.test_queries or self.queries

    # ------------------------------------------------------------------ building
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, *sources: dict[str, Any]) -> RunConfig:
        """Merge dicts (later wins; component option sections merge key by key) and validate."""
        merged: dict[str, Any] = {}
        for src in sources:
            for key, value in src.items():
                key = key.replace("-", "_")
                if key not in cls.keys():
                    close = difflib.get_close_matches(key, cls.keys(), n=1, cutoff=0.6)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(f"unknown setting {key!r}.{hint} See `metareg run --help` for all settings.")
                if key in OPTION_SECTIONS:
                    if value is None:
                        value = {}
                    if not isinstance(value, dict):
                        raise ConfigError(f"{key} must be a mapping of option names to values, got {value!r}")
                    merged[key] = {**merged.get(key, {}), **{k.replace("-", "_"): v for k, v in value.items()}}
                else:
                    merged[key] = value
        return cls._typed(merged)

    @classmethod
    def _typed(cls, values: dict[str, Any]) -> RunConfig:
        hints = get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key in OPTION_SECTIONS:
                kwargs[key] = dict(value)
                continue
            try:
                kwargs[key] = _convert(value, hints[key], key)
            except OptionError as exc:
                raise ConfigError(str(exc).replace("option ", "setting ", 1)) from None
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def load_yaml(cls, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of settings, not {type(data).__name__}")
        return data

    def replace(self, **changes) -> RunConfig:
        return type(self)._typed({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        positive = ["ways", "shots", "queries", "meta_batch_size", "epoch_length", "test_num_tasks",
                     "val_num_tasks", "eval_meta_batch_size", "num_nodes", "step_size"]
        for name in positive:
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        for name in ("test_ways", "test_shots", "test_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer (or unset to reuse {name[5:]}), got {value}")
        if self.ways < 2 or self.eval_ways < 2:
            raise ConfigError(f"ways and test_ways must be at least 2, got {self.ways} and {self.eval_ways}")
        if self.num_tasks == 0 or self.num_tasks < -1:
            raise ConfigError(
                f"num_tasks must be -1 (a fresh task each draw) or a positive pool size, got {self.num_tasks}"
            )
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ConfigError("set max_epochs or max_steps to a positive number")
        if self.max_epochs < -1 or self.max_epochs == 0 and self.max_steps < 1:
            raise ConfigError(f"max_epochs must be positive (or -1 with max_steps), got {self.max_epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ConfigError(f"gradient_clip_val must be positive, got {self.gradient_clip_val}")
        valid_precision = {"32-true", "32", "16-mixed", "bf16-mixed", "64-true", "64", "bf16-true", "16-true"}
        if self.precision not in valid_precision:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(sorted(valid_precision))}")
        if self.accelerator not in {"auto", "cpu", "gpu", "cuda", "mps", "tpu"}:
            raise ConfigError(f"accelerator {self.accelerator!r} is not one of auto, cpu, gpu, cuda, mps, tpu")
        self.devices_value()  # validates the text

    def devices_value(self) -> int | str | list[int]:
        text = str(self.devices).strip()
        if text in ("auto", "-1"):
            return text if text == "auto" else -1
        try:
            if "," in text:
                return [int(t) for t in text.split(",") if t.strip()]
            value = int(text)
        except ValueError:
            raise ConfigError(
                f"devices must be 'auto', a count or a comma-separated list of ids, got {text!r}"
            ) from None
        if value < 1:
            raise ConfigError(f"devices must be at least 1, got {value}")
        return value

