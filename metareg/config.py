"""RunConfig: every setting of a run, validated before any work starts.

Values come from defaults, then a YAML file (``--config``), then the command line;
later sources win. Unknown keys are errors with a suggestion, never ignored
(Flash silently dropped a misspelt ``num_task``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from metareg import kinds, legacy_names
from metareg.errors import ConfigError, OptionError
from metareg.options import _convert
from metareg.sources import normalise as normalise_sources
from metareg.sources import replaced_selection

OPTION_SECTIONS = tuple(k.options_field for k in kinds.ALL)
# Mappings of free-form keys (merged key by key across sources): component options and Lightning Trainer flags.
MAPPING_SECTIONS = (*OPTION_SECTIONS, "trainer_options", "lr_multipliers")
# The repeatable KEY=VALUE command-line flag of each mapping section.
SECTION_FLAGS = {**{k.options_field: k.cli_flag for k in kinds.ALL}, "trainer_options": "--trainer-opt",
                 "lr_multipliers": "--lr-multiplier"}
# Queries per class of validation and test episodes unless test_queries says otherwise: the field's protocol
# (Snell et al. 2017 onwards), so reported accuracies compare with published ones whatever --queries trains on.
EVAL_QUERIES = 15
INT_MAX = 2**31 - 1  # counts beyond this overflow the int32 index tensors of the sampler and data loaders


@dataclass(frozen=True)
class Bound:
    """The values a numeric setting may take: ``low``..``high`` (ends open or closed), plus ``sentinels``."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    sentinels: tuple = ()  # special values outside the range, e.g. -1 = "no limit"
    hint: str = ""

    def contains(self, value) -> bool:
        if value in self.sentinels:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, integer: bool) -> str:
        """``a positive integer, at most 10`` / ``a finite number in (0, 10]``, sentinels and hint included."""
        if integer and self.low >= 1:
            text = "a positive integer" + (f", at least {_num(self.low)}" if self.low > 1 else "")
            text += f", at most {_num(self.high)}"
        elif integer:
            text = f"an integer from {_num(self.low)} to {_num(self.high)}"
        else:
            text = (f"a finite number in {'(' if self.low_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.high_open else ']'}")
        text += "".join(f", or {s}" for s in self.sentinels)
        return text + (f" ({self.hint})" if self.hint else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


COUNT = Bound(1, INT_MAX)
# Every int and float setting has a bound here (tests check that none is missing); floats must also be finite.
BOUNDS: dict[str, Bound] = {
    "ways": Bound(2, INT_MAX, hint="an episode needs at least 2 classes to choose between"),
    "shots": COUNT, "queries": COUNT, "meta_batch_size": COUNT, "epoch_length": COUNT,
    "test_ways": Bound(2, INT_MAX, hint="unset it to reuse ways"),
    "test_shots": Bound(1, INT_MAX, hint="unset it to reuse shots"),
    "test_queries": Bound(1, INT_MAX, hint=f"unset it for {EVAL_QUERIES}, the field's protocol"),
    "num_tasks": Bound(1, INT_MAX, sentinels=(-1,), hint="-1 draws a fresh task every time"),
    "test_num_tasks": COUNT, "val_num_tasks": COUNT, "eval_meta_batch_size": COUNT,
    "max_epochs": Bound(1, INT_MAX, sentinels=(-1,), hint="-1 with max_steps for a step budget"),
    "max_steps": Bound(1, INT_MAX, sentinels=(-1,), hint="-1: no limit"),
    "lr": Bound(0, 10, low_open=True),
    "weight_decay": Bound(0, 1),
    "momentum": Bound(0, 1, high_open=True),
    "step_size": COUNT,
    "gamma": Bound(0, 1, low_open=True, hint="the factor that multiplies the learning rate at each drop"),
    # list settings: each item is checked
    "milestones": Bound(1, INT_MAX, hint="epochs after which the learning rate drops"),
    "milestone_factors": Bound(0, 1000, low_open=True, hint="factors of the base learning rate"),
    "lr_multipliers": Bound(0, 1000, hint="0 freezes the matching parameters' learning rate"),
    "label_smoothing": Bound(0, 1, high_open=True),
    "gradient_clip_val": Bound(0, 1e6, low_open=True, hint="unset it for no clipping"),
    "seed": Bound(0, 2**32 - 1, hint="numpy's seed range"),
    "num_nodes": Bound(1, 100_000),
}


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
    # Several sources, [{name, weight}], their options qualified in dataset_options (`omniglot.root`): metareg.sources
    datasets: list = field(default_factory=list)
    # episodes (Flash's names)
    ways: int = 5
    shots: int = 1
    queries: int = 5
    # fixed: N-way K-shot as above; variable: Meta-Dataset's episodes of 5-50 ways and imbalanced shots
    # (metareg.variable_episodes), which ignore ways/shots/queries and their test_ counterparts.
    episodes: Literal["fixed", "variable"] = "fixed"
    # The defaults train a Conv-4 on glyphs in a few minutes on a 2-core CPU (README).
    meta_batch_size: int = 8
    num_tasks: int = -1  # size of a fixed pool of training tasks; -1 draws a fresh task every time
    epoch_length: int = 75  # meta-batches per epoch
    test_ways: int | None = None  # None: same as ways
    test_shots: int | None = None
    test_queries: int | None = None  # None: EVAL_QUERIES (15), not queries
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
    nesterov: bool = True  # sgd only
    scheduler: Literal["none", "cosine", "step", "multistep"] = "none"
    step_size: int = 10  # epochs between lr drops for scheduler=step
    gamma: float = 0.5
    milestones: list[int] = field(default_factory=list)  # epochs, for scheduler=multistep
    # Absolute factors of the base lr after each milestone (MetaOptNet's 0.06, 0.012, 0.0024); empty: gamma**i.
    milestone_factors: list[float] = field(default_factory=list)
    # glob over the strategy's parameter names -> lr factor; a parameter joins the first pattern it matches.
    lr_multipliers: dict = field(default_factory=dict)
    label_smoothing: float = 0.0  # of the training cross-entropy, for every strategy using the core loss
    gradient_clip_val: float | None = None
    seed: int = 0
    # hardware (Lightning's names; its `strategy` is `trainer_strategy` here)
    accelerator: str = "auto"
    devices: str = "1"
    precision: str = "32-true"
    # Conv weights in NHWC layout: 1.5x faster Conv-4 ProtoNet training on a 2-core CPU, 10% slower
    # for MAML (measured); unset (None) follows the strategy's `channels_last` preference.
    channels_last: bool | None = None
    # torch.compile of the strategy's training step (bench/bench_strategies.py --compare protonet-compile
    # measures it); off by default: compiling takes minutes on a small CPU before the first step.
    compile: bool = False
    trainer_strategy: str = "auto"
    num_nodes: int = 1
    # output
    output_dir: str | None = None
    progress: bool = True
    # Lightning: loggers beside metareg's own metrics.csv, and Trainer flags passed through (metareg.trainer_options)
    logger: Literal["csv", "tensorboard", "mlflow", "wandb"] = "csv"
    trainer_options: dict = field(default_factory=dict)

    @property
    def eval_ways(self) -> int:
        return self.test_ways or self.ways

    @property
    def eval_shots(self) -> int:
        return self.test_shots or self.shots

    @property
    def eval_queries(self) -> int:
        return self.test_queries or EVAL_QUERIES

    # ------------------------------------------------------------------ building
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, *sources: dict[str, Any]) -> RunConfig:
        """Merge dicts (later wins; component option sections merge key by key) and validate."""
        merged: dict[str, Any] = {}
        for src in sources:
            src = legacy_names.flatten_flash_section(src, set(cls.keys()), ConfigError)
            replaced_selection(merged, src)  # `--dataset x` after a config file's datasets list, and back
            for key, value in src.items():
                if not isinstance(key, str):
                    raise ConfigError(f"setting names must be text, got {key!r}; see `metareg run --help`")
                key = key.replace("-", "_")
                if key not in cls.keys() and key in legacy_names.SETTINGS:
                    legacy = legacy_names.SETTINGS[key]
                    if legacy.new in src:
                        raise ConfigError(f"both {key!r} ({legacy.source}'s name) and {legacy.new!r} are given; "
                                          f"keep only {legacy.new!r}")
                    legacy_names.note(key, legacy.new, legacy.source)
                    key = legacy.new
                if key not in cls.keys():
                    close = difflib.get_close_matches(key, cls.keys(), n=1, cutoff=0.6)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(f"unknown setting {key!r}.{hint} See `metareg run --help` for all settings.")
                if key in MAPPING_SECTIONS:
                    if value is None:
                        value = {}
                    if not isinstance(value, dict):
                        raise ConfigError(f"{key} must be a mapping of option names to values, got {value!r}")
                    bad = [k for k in value if not isinstance(k, str)]
                    if bad:
                        raise ConfigError(f"{key}: option names must be text, got {bad[0]!r}")
                    if key != "lr_multipliers":  # its keys are parameter-name patterns, kept as written
                        value = {k.replace("-", "_"): v for k, v in value.items()}
                    merged[key] = {**merged.get(key, {}), **value}
                else:
                    merged[key] = value
        return cls._typed(merged)

    @classmethod
    def from_saved(cls, saved: Any, source: str, *overrides: dict[str, Any]) -> RunConfig:
        """Settings stored in a checkpoint or run directory, then ``overrides``; errors name ``source``."""
        if not isinstance(saved, dict):
            raise ConfigError(f"the settings stored in {source!r} are {type(saved).__name__}, not a mapping of "
                              "settings: the file is damaged or was not written by metareg")
        try:
            stored = cls.from_sources(saved)
        except ConfigError as exc:
            raise ConfigError(f"settings stored in {source!r}: {exc}") from None
        return cls.from_sources(saved, *overrides) if overrides else stored  # an override's error is the user's

    @classmethod
    def _typed(cls, values: dict[str, Any]) -> RunConfig:
        hints = get_type_hints(cls)
        values = normalise_sources(values)
        kwargs = {}
        for key, value in values.items():
            if key in OPTION_SECTIONS:
                kwargs[key] = dict(value)
                continue
            if key == "trainer_options":
                from metareg import trainer_options

                kwargs[key] = trainer_options.validate(value)
                continue
            if key == "lr_multipliers":
                kwargs[key] = {pattern: _float(factor, f"lr_multipliers[{pattern!r}]")
                               for pattern, factor in value.items()}
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
        where = f"config file {str(path)!r}"
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                "pass a YAML file of settings saved as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where} is not valid YAML{at}: {' '.join(problem.split())}; fix it there") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must hold a mapping of settings, not {type(data).__name__}")
        return data

    def replace(self, **changes) -> RunConfig:
        base = self.to_dict()
        replaced_selection(base, changes)
        return type(self)._typed({**base, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name not in BOUNDS:
                continue
            bound = BOUNDS[f.name]
            integer = _numeric_types(hints[f.name]) == {int}
            flag = SECTION_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
            if isinstance(value, (list, dict)):
                items = value.values() if isinstance(value, dict) else value
                bad = next((v for v in items if not _within(v, bound)), None)
                if bad is not None:
                    what = "a mapping to values" if isinstance(value, dict) else "a list of values"
                    raise ConfigError(
                        f"{f.name} must be {what} each {bound.describe(integer)}, got {bad!r} in "
                        f"{value!r}; pass {flag} (or {f.name}: in the config file) within that range"
                    )
            elif not _within(value, bound):
                raise ConfigError(
                    f"{f.name} must be {bound.describe(integer)}, got {value!r}; pass {flag} "
                    f"(or {f.name}: in the config file) within that range"
                )
        self._validate_optimisation()
        if self.max_epochs == -1 and self.max_steps == -1:
            raise ConfigError("set max_epochs or max_steps to a positive number (both are -1: training would "
                              "never stop)")
        valid_precision = {"32-true", "32", "16-mixed", "bf16-mixed", "64-true", "64", "bf16-true", "16-true"}
        if self.precision not in valid_precision:
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(sorted(valid_precision))}")
        if self.accelerator not in {"auto", "cpu", "gpu", "cuda", "mps", "tpu"}:
            raise ConfigError(f"accelerator {self.accelerator!r} is not one of auto, cpu, gpu, cuda, mps, tpu")
        self.devices_value()  # validates the text

    def _validate_optimisation(self) -> None:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ConfigError(f"milestones must be strictly increasing epochs, got {self.milestones}; "
                              "e.g. --milestones 20,40,50")
        if self.scheduler == "multistep":
            if not self.milestones:
                raise ConfigError("scheduler multistep needs --milestones (epochs after which the learning rate "
                                  "drops, e.g. --milestones 20,40,50)")
            if self.milestone_factors and len(self.milestone_factors) != len(self.milestones):
                raise ConfigError(
                    f"milestone_factors {self.milestone_factors} do not pair with milestones {self.milestones}: "
                    "give one factor per milestone, or none for gamma, gamma**2, ..."
                )
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov SGD needs a momentum above 0, got --momentum 0; pass --no-nesterov for "
                              "plain SGD, or a positive --momentum")
        for pattern in self.lr_multipliers:
            if not pattern.strip():
                raise ConfigError("lr_multipliers: a pattern is empty; name parameters with a glob such as "
                                  "'backbone.*=0.1'")

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


def _within(value, bound: Bound) -> bool:
    return (isinstance(value, int) or math.isfinite(value)) and bound.contains(value)


def _float(value, name: str) -> float:
    try:
        return _convert(value, float, name)
    except OptionError as exc:
        raise ConfigError(str(exc).replace("option ", "setting ", 1)) from None


def _numeric_types(tp) -> set[type]:
    """``{int}``, ``{float}`` (or both) for a setting's annotation, e.g. ``float | None`` -> ``{float}``."""
    import typing

    args = typing.get_args(tp) or (tp,)
    return {a for a in args if a in (int, float)}
