"""`metareg recipes` (the shipped recipes, their papers, whether their data is here) and `metareg reproduce`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import click

from metareg.cli.train import HELP, _cli_settings, _status, component_options, config_options
from metareg.config import RunConfig
from metareg.errors import ConfigError

DATA_ROOT_HELP = ("Folder holding one folder per dataset (omniglot/images_background.zip, miniimagenet/..., "
                  "cifar100/...), laid out as the metareg cache folder, the default ($METAREG_CACHE_DIR or the user "
                  "cache folder).")


def _short_paper(paper: str) -> str:
    """``Snell, Swersky and Zemel. Prototypical ... NeurIPS 2017 (...)`` -> ``Snell et al. 2017``."""
    first = re.split(r"[,.]| and ", paper, maxsplit=1)[0].strip()
    year = re.search(r"\b(?:19|20)\d\d\b", paper)
    return f"{first} et al. {year.group(0) if year else ''}".strip()


def _data_root(given: str | None) -> Path | None:
    from metareg.recipes.recipe import default_data_root

    return Path(given).expanduser() if given else default_data_root()


@click.command("recipes")
@click.argument("name", required=False)
@click.option("--data-root", type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recipes_cmd(name: str | None, data_root: str | None, as_json: bool) -> None:
    """List the recipes: runs that follow a paper, each tied to one row of one of its tables.

    With NAME, print that recipe's file: its paper, table row, published accuracy, protocol,
    sources, deviations from the paper and settings.

    \b
    Examples:
      metareg recipes
      metareg recipes --data-root ../shared/data
      metareg recipes protonet-omniglot-5w1s
      metareg reproduce protonet-omniglot-5w1s --data-root ../shared/data --max-epochs 5
    """
    from metareg import recipes

    root = _data_root(data_root)
    if name is not None:
        recipe = recipes.find(name)
        if as_json:
            click.echo(json.dumps(_as_dict(recipe, root), indent=2))
            return
        click.echo(recipes.recipe.text(name), nl=False)
        return
    found = recipes.load_all()
    if as_json:
        click.echo(json.dumps({"data_root": str(root) if root else None,
                               "recipes": [_as_dict(r, root) for r in found]}, indent=2))
        return
    rows = [("NAME", "PAPER", "TABLE ROW", "PUBLISHED", "DATA")]
    for r in found:
        here = r.data_found(root)
        rows.append((r.name, _short_paper(r.paper), r.table, r.published, "here" if here else "not found"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    click.echo(f"\ndata looked for under {root if root else '(no data root: pass --data-root)'}; "
               "`metareg recipes NAME` shows a recipe, `metareg reproduce NAME` runs it")


def _as_dict(recipe, root: Path | None) -> dict:
    found = recipe.data_found(root)
    return {"name": recipe.name, "version": recipe.version, "paper": recipe.paper, "table": recipe.table,
            "published": {"accuracy": recipe.accuracy, "ci95": recipe.ci95}, "protocol": recipe.protocol,
            "images": {"channels": recipe.channels, "size": recipe.image_size}, "data": str(found) if found else None,
            "deviations": list(recipe.deviations)}


@click.command("reproduce")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False), help=DATA_ROOT_HELP)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of settings over the recipe's; command-line options win over both.")
@click.option("--lr-multiplier", "lr_multiplier", multiple=True, metavar="PATTERN=FACTOR",
              help=HELP["lr_multipliers"])
@component_options
@config_options
def reproduce_cmd(name, data_root, config_file, **values):
    """Run a recipe and compare its test accuracy with the paper's.

    Settings come from the recipe, then --config, then the command line (a shorter budget:
    --max-epochs, --max-steps). The verdict says whether the published accuracy lies inside
    this run's 95% confidence interval; the settings that differ from the recipe are listed,
    since a run with another budget or protocol is not the paper's experiment.

    \b
    Examples:
      metareg reproduce protonet-omniglot-5w1s --data-root ../shared/data
      metareg reproduce protonet-omniglot-5w1s --data-root ../shared/data --max-epochs 5 --output-dir runs/p5w1s
    """
    from metareg import recipes
    from metareg.files import atomic_write
    from metareg.run import train

    recipe = recipes.find(name)
    file_settings = RunConfig.load_yaml(config_file) if config_file else {}
    cli_settings = _cli_settings(values)
    layers = recipe.layered(file_settings, cli_settings)
    dataset = cli_settings.get("dataset") or file_settings.get("dataset") or recipe.dataset
    if data_root is not None and dataset == recipe.dataset:
        root = recipe.dataset_root(Path(data_root).expanduser())
        if root is None:
            raise ConfigError(f"the data of recipe {name!r} is not under --data-root {data_root!r}: looked for "
                              f"{' or '.join(recipe.data)} there")
        layers.insert(1, {"dataset_options": {"root": str(root)}})  # the user's own root option still wins
    config = RunConfig.from_sources(*layers)
    changed = _changes(recipe.config(), config)
    result = train(config, announce=_status)
    if result is None:  # a DDP worker process: the launcher reports
        return
    report = result.report
    mean, ci = 100 * report.mean, 100 * report.ci95
    inside, text = recipes.verdict(mean, ci, recipe.accuracy)
    summary = _read_summary(result.run_dir)
    lines = [
        f"run directory: {result.run_dir}",
        report.line(),
        f"recipe:  {recipe.name} v{recipe.version}: {_short_paper(recipe.paper)}, {recipe.table}",
        f"paper:   {recipe.published} ({recipe.protocol_text})",
        f"run:     {mean:.2f} ± {ci:.2f} % ({report.ways}-way {report.shots}-shot, {report.queries} queries, "
        f"{report.episodes} episodes; {_wall(summary)})",
        f"verdict: {text}",
    ]
    if changed:
        lines.append("changed from the recipe: " + ", ".join(f"{k}={v!r} (recipe: {r!r})" for k, v, r in changed))
    for line in lines:
        click.echo(line)
    record = {"recipe": recipe.name, "version": recipe.version, "paper": recipe.paper, "table": recipe.table,
              "published": {"accuracy": recipe.accuracy, "ci95": recipe.ci95}, "protocol": recipe.protocol,
              "run": {"accuracy": mean, "ci95": ci, "episodes": report.episodes},
              "reproduced": inside, "verdict": text, "comparison": "published accuracy inside the run's 95% CI",
              "changed": {k: {"run": v, "recipe": r} for k, v, r in changed}}
    atomic_write(result.run_dir / "reproduction.json", json.dumps(record, indent=2, default=str) + "\n")


# Where runs write and how they show progress: not part of the experiment a recipe describes.
_NOT_EXPERIMENT = {"output_dir", "progress", "logger"}


def _changes(recipe: RunConfig, run: RunConfig) -> list[tuple[str, object, object]]:
    ours, theirs = run.to_dict(), recipe.to_dict()
    for side in (ours, theirs):  # where the data lives is not the experiment either
        side["dataset_options"] = {k: v for k, v in side["dataset_options"].items() if k != "root"}
    return [(k, ours[k], theirs[k]) for k in ours if k not in _NOT_EXPERIMENT and ours[k] != theirs[k]]


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def _wall(summary: dict) -> str:
    seconds = summary.get("wall_seconds")
    return f"wall time {seconds / 60:.1f} min" if isinstance(seconds, (int, float)) else "wall time unknown"
