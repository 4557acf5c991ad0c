"""`metareg run` and `metareg eval`: thin click front-ends over metareg.run."""
from __future__ import annotations

import typing
from dataclasses import fields

import click

from metareg import kinds
from metareg.config import EVAL_QUERIES, MAPPING_SECTIONS, RunConfig
from metareg.errors import ConfigError
from metareg.options import parse_assignments
from metareg.run_settings import EVAL_SETTINGS

HELP = {
    "dataset": "Dataset name (see `metareg list datasets`); repeat it to train on several sources, whose options are "
               "then qualified: --dataset-opt omniglot.root=PATH.",
    "backbone": "Backbone name (see `metareg list backbones`).",
    "transform": "Training augmentation chain (see `metareg list transforms`).",
    "strategy": "Meta-learning strategy, e.g. prototypicalnetworks, maml (see `metareg list strategies`).",
    "ways": "Classes per training episode.",
    "shots": "Support samples per class in training episodes.",
    "queries": "Query samples per class in training episodes.",
    "episodes": "fixed: N-way K-shot episodes (--ways, --shots, --queries); variable: Meta-Dataset's episodes of "
                "5-50 ways, class-imbalanced shots and up to 10 queries per class, in training and test.",
    "meta_batch_size": "Episodes per optimizer step.",
    "num_tasks": "Size of a fixed pool of training tasks; -1 draws a fresh task every time.",
    "epoch_length": "Meta-batches (optimizer steps) per epoch, across all processes.",
    "test_ways": "Classes per validation/test episode (default: --ways).",
    "test_shots": "Support samples per class at validation/test (default: --shots).",
    "test_queries": f"Query samples per class at validation/test (default: {EVAL_QUERIES}, the field's protocol, "
                    "whatever --queries is).",
    "test_num_tasks": "Fixed, seeded test episodes to report on.",
    "val_num_tasks": "Fixed validation episodes evaluated after each epoch.",
    "eval_meta_batch_size": "Episodes per forward pass during validation and test.",
    "max_epochs": "Training epochs (-1 with --max-steps for a step budget).",
    "max_steps": "Stop after this many optimizer steps (-1: no limit).",
    "lr": "Learning rate of the outer optimizer.",
    "optimizer": "Outer optimizer.",
    "weight_decay": "Weight decay of the outer optimizer.",
    "momentum": "Momentum for --optimizer sgd.",
    "nesterov": "Nesterov momentum for --optimizer sgd (needs --momentum above 0).",
    "scheduler": "Learning-rate schedule: none, cosine (per step), step (every --step-size epochs) or multistep "
                 "(at --milestones). Every --lr-multiplier group follows it.",
    "step_size": "Epochs between learning-rate drops for --scheduler step.",
    "gamma": "Learning-rate factor at each drop for --scheduler step (and multistep without --milestone-factors).",
    "milestones": "Epochs after which the learning rate drops, for --scheduler multistep, strictly increasing, "
                  "comma-separated, e.g. 20,40,50.",
    "milestone_factors": "Factor of the base --lr after each milestone, one per milestone, e.g. 0.06,0.012,0.0024 "
                         "(default: gamma, gamma**2, ...).",
    "lr_multipliers": "A learning-rate factor for the strategy's parameters whose names match a glob, e.g. "
                      "'backbone.*=0.1' (names as in named_parameters(): backbone.*, head.*); repeatable, a "
                      "parameter joins the first pattern it matches, the rest keep --lr.",
    "label_smoothing": "Label smoothing of the training cross-entropy, in [0, 1), for every strategy that uses "
                       "the core loss.",
    "gradient_clip_val": "Clip gradient norm to this value.",
    "seed": "Seed for weights, training episodes and the fixed validation/test episodes.",
    "accelerator": "Lightning accelerator: auto, cpu, gpu, ...",
    "devices": "Lightning devices: a count, a list like 0,1, or auto.",
    "precision": "Lightning precision: 32-true, 16-mixed, bf16-mixed, ...",
    "channels_last": "Keep convolution weights in channels-last (NHWC) memory layout (faster on many CPUs and GPUs). "
                     "Default: the strategy's choice (on, except for maml).",
    "compile": "Compile the strategy's training step with torch.compile (first step slower; evaluation stays eager).",
    "trainer_strategy": "Lightning's distribution strategy: auto, ddp, ddp_spawn, fsdp, ...",
    "num_nodes": "Machines for distributed training.",
    "output_dir": "Run directory (default: runs/<time>-<strategy>-<dataset>).",
    "progress": "Show a progress bar.",
    "logger": "Lightning logger beside metrics.csv: csv (metrics.csv only), tensorboard, mlflow, wandb.",
}


def _click_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)])
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if origin in (typing.Union, __import__("types").UnionType) else tp
    return {int: click.INT, float: click.FLOAT, str: click.STRING}.get(base, click.STRING)


def config_options(func, only: set[str] | None = None):
    """Decorate ``func`` with one ``--option`` per RunConfig field (default None = not given)."""
    hints = typing.get_type_hints(RunConfig)
    for f in reversed(fields(RunConfig)):
        # `datasets` is written `--dataset A --dataset B` on the command line.
        if f.name in MAPPING_SECTIONS or f.name == "datasets" or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] in (bool, bool | None):
            func = click.option(f"{flag}/--no-{f.name.replace('_', '-')}", f.name, default=None,
                                help=HELP.get(f.name, ""))(func)
        else:
            default = f.default if not callable(f.default_factory) else f.default_factory()
            shown = f"  [default: {'none' if default == [] else default if default is not None else 'see help'}]"
            listed = typing.get_origin(hints[f.name]) is list  # comma-separated on the command line
            func = click.option(flag, f.name, type=_click_type(hints[f.name]), default=None,
                                multiple=f.name == "dataset",
                                metavar="A,B,..." if listed else None, help=HELP.get(f.name, "") + shown)(func)
    return func


def _opt_param(kind: kinds.Kind) -> str:
    return kind.cli_flag.removeprefix("--").replace("-", "_")  # --backbone-opt -> backbone_opt


def kind_option(kind: kinds.Kind):
    """``--backbone-opt KEY=VALUE`` (repeatable) for one kind."""
    return click.option(kind.cli_flag, _opt_param(kind), multiple=True, metavar="KEY=VALUE",
                        help=f"An option of the {kind.singular} (see `metareg info {kind.singular} NAME`); "
                             "repeatable.")


def component_options(func):
    for kind in reversed(kinds.ALL):  # the last one applied is listed first: --help shows them in run order
        func = kind_option(kind)(func)
    return click.option("--trainer-opt", "trainer_opt", multiple=True, metavar="KEY=VALUE",
                        help="A pytorch_lightning.Trainer argument passed through, e.g. accumulate_grad_batches=4, "
                             "limit_train_batches=0.5, deterministic=true; repeatable.")(func)


def _cli_settings(values: dict) -> dict:
    settings = {k: v for k, v in values.items() if v is not None and k in RunConfig.keys()}
    named = settings.pop("dataset", ())  # one --dataset: today's setting; several: the run's sources
    if named:
        settings.update({"dataset": named[0]} if len(named) == 1 else {"datasets": list(named)})
    for kind in kinds.ALL:
        given = values.get(_opt_param(kind)) or ()
        if given:
            settings[kind.options_field] = parse_assignments(given, kind.cli_flag)
    if values.get("trainer_opt"):
        settings["trainer_options"] = parse_assignments(values["trainer_opt"], "--trainer-opt")
    if values.get("lr_multiplier"):
        settings["lr_multipliers"] = _multipliers(values["lr_multiplier"])
    return settings


def _multipliers(pairs) -> dict[str, str]:
    """``--lr-multiplier 'backbone.*=0.1'`` (repeatable) -> ``{"backbone.*": "0.1"}``, patterns kept as typed."""
    out = {}
    for item in pairs:
        pattern, sep, factor = item.rpartition("=")
        if not sep or not pattern.strip() or not factor.strip():
            raise ConfigError(f"--lr-multiplier expects PATTERN=FACTOR, e.g. 'backbone.*=0.1', got {item!r}")
        out[pattern.strip()] = factor.strip()
    return out


@click.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings; "
              "command-line options win over it.")
@click.option("--recipe", metavar="NAME", help="Start from a recipe's settings (see `metareg recipes`); "
              "--config and command-line options win over it.")
@click.option("--print-config", is_flag=True, help="Print the resolved settings as YAML and exit.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its last.ckpt.")
@click.option("--lr-multiplier", "lr_multiplier", multiple=True, metavar="PATTERN=FACTOR",
              help=HELP["lr_multipliers"])
@component_options
@config_options
def run_cmd(config_file, recipe, print_config, resume, **values):
    """Train a few-shot learner and report test accuracy on unseen classes.

    \b
    Examples:
      metareg run --strategy prototypicalnetworks
      metareg run --strategy maml --ways 5 --shots 1 --strategy-opt adaptation_steps=5
      metareg run --config experiment.yaml --seed 3
      metareg run --recipe protonet-omniglot-5w1s --dataset-opt root=DIR --max-epochs 5
    """
    from metareg.run import train

    layered = None
    if recipe is not None:
        from metareg.recipes import find

        layered = find(recipe).layered  # an unknown name is refused before anything is read
    file_settings = RunConfig.load_yaml(config_file) if config_file else {}
    cli_settings = _cli_settings(values)
    if resume and not config_file:
        # A resumed run starts from the settings it was started with.
        out = cli_settings.get("output_dir")
        if not out:
            raise ConfigError("--resume needs --output-dir: the run directory to continue")
        from pathlib import Path

        from metareg.rundir import check, launched_worker

        if not launched_worker():  # a ddp-launched process runs under its parent's claim
            check(Path(out).resolve(), "run", resume=True)  # a run, and not in use: before reading its settings
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"cannot resume: {str(saved)!r} does not exist")
        file_settings = RunConfig.load_yaml(saved)
        RunConfig.from_saved(file_settings, str(saved))  # an error in the stored settings names the file
        layered = None  # the saved settings are whole: they came from the recipe when the run started
    # recipe < config file < command line
    config = RunConfig.from_sources(*(layered or (lambda *s: s))(file_settings, cli_settings))
    if print_config:
        from metareg.build import with_component_defaults

        config = with_component_defaults(config)  # component names and options are checked too
        click.echo(config.to_yaml(), nl=False)
        return
    result = train(config, resume=resume, announce=_status)
    if result is not None:
        click.echo(f"run directory: {result.run_dir}")
        click.echo(result.report.line())


def _status(line: str) -> None:
    # On stderr with the progress bar: stdout holds only the results (the directory and the accuracy line).
    click.echo(line, err=True)


@click.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@kind_option(kinds.DATASET)
@lambda f: config_options(f, EVAL_SETTINGS)  # the one list, shared with evaluate's check
def eval_cmd(checkpoint, **values):
    """Re-evaluate a saved model on fixed seeded test episodes.

    \b
    Example:
      metareg eval runs/RUN/checkpoints/last.ckpt --test-shots 5 --test-num-tasks 1000
    """
    from metareg.run import evaluate

    settings = _cli_settings(values)
    output_dir = settings.pop("output_dir", None)
    result = evaluate(checkpoint, output_dir=output_dir, announce=_status, **settings)
    if result is not None:
        click.echo(f"results: {result.run_dir}")
        click.echo(result.report.line())
