"""`metareg sweep` (every combination of a grid of settings) and `metareg table` (a paper's results table)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("sweep")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2,...",
              help="A setting (seed, lr, ...) or component option (strategy_options.temperature) and its values; "
                   "repeatable: every combination runs.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The sweep folder (default: sweeps/<time>-<config name>); run it again to continue it.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Members running at once, each a `metareg run` process (1: one after another in this "
                   "process, which loads torch once).")
def sweep_cmd(config: Path, grid: tuple[str, ...], output_dir: Path | None, jobs: int) -> None:
    """Run CONFIG once for every combination of the --grid values, each in its own run directory.

    \b
    Examples:
      metareg sweep experiment.yaml --grid seed=0,1,2 --grid strategy_options.temperature=1,10
      metareg sweep experiment.yaml --grid seed=0,1,2 -o sweeps/temp --jobs 2   # again: continues it

    Every member's settings are checked before the first one starts. Finished members are skipped,
    interrupted ones continue with --resume; SWEEP/sweep.json lists what ran.
    """
    from metareg.errors import ConfigError
    from metareg.sweeps import INDEX, parse_grid, sweep

    if not grid:
        raise ConfigError("metareg sweep needs at least one --grid KEY=V1,V2,... (e.g. --grid seed=0,1,2)")
    result = sweep(config, parse_grid(grid), output_dir=output_dir, jobs=jobs, echo=click.echo)
    counts = result.counts()
    click.echo(f"sweep: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))} | {result.path / INDEX}")
    if any(s != "finished" for s in counts):
        click.get_current_context().exit(1)  # some member did not finish: say so to scripts


@click.command("table")
@click.argument("paths", nargs=-1, required=True, metavar="RUN_OR_SWEEP...", type=click.Path(path_type=Path))
@click.option("--by", "by", multiple=True, default=("strategy",), show_default=True, metavar="KEY",
              help="What makes a row: a component (strategy, backbone, ...), a setting or an option "
                   "(strategy_options.temperature); repeatable. Runs of a row differ only in their seed.")
@click.option("--protocol", default=None, metavar="5w1s",
              help="The test protocol, ways and shots (5w1s, or 5w1s15q); runs evaluated at it with `metareg eval` "
                   "count too. Default: the one protocol the runs share.")
@click.option("--baseline", default=None, metavar="NAME",
              help="The row the others are paired against on their shared test episodes (its --by value).")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv", "latex"]), default="markdown",
              show_default=True)
def table_cmd(paths: tuple[Path, ...], by: tuple[str, ...], protocol: str | None, baseline: str | None,
              fmt: str) -> None:
    """Mean test accuracy over seeds, one row per method, from runs and sweep folders.

    \b
    Examples:
      metareg table sweeps/strategies --by strategy --protocol 5w1s --baseline prototypicalnetworks
      metareg table runs/a runs/b runs/c --by strategy_options.temperature --format latex

    Each row gives the mean over its seeds, a 95% CI across seeds (Student's t over the seeds'
    means) and the mean of the runs' 95% CIs over test episodes; with --baseline, a paired test on
    the test episodes each row shares with it. Runs tested on other episodes are refused.
    """
    from metareg.table_formats import render
    from metareg.tables import build

    by_keys = [k.strip().replace("-", "_") for item in by for k in item.split(",") if k.strip()]
    rows = build(paths, by_keys, protocol, baseline)
    click.echo(render(rows, by_keys, baseline, fmt), nl=False)
