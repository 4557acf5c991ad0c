"""``metareg check``: does every installed combination of components work? (See metareg/combinations.py.)"""
from __future__ import annotations

import warnings

import click


@click.command("check")
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, envvar="METAREG_VERBOSE",  # as `metareg -v check`
              help="Show the components' warnings.")
def check_cmd(kind: str | None, name: str | None, verbose: bool) -> None:
    """Run every installed strategy with every backbone, and every transform, on tiny synthetic images.

    Each strategy and backbone take one training step and one evaluation episode on
    1x28x28 grey and 3x32x32 RGB episodes, each component built at the small size its
    plugin declares (test_options); each transform is checked on both image kinds.
    With KIND and NAME (e.g. `metareg check backbone resnet18`) only that component is
    run against the others. Prints one row per combination: ok, refused (why the
    components cannot work together) or failed (the error). Exits 1 if any failed.
    """
    from metareg.combinations import FAILED, REFUSED, check, combinations
    from metareg.registry import Registry

    registry = Registry.current()
    planned = combinations(registry, kind, name)  # a bad KIND or NAME is refused before anything runs
    if not planned:
        click.echo("nothing to check: no strategies, backbones or transforms are installed")
        return
    width = max(len("COMBINATION"), *(len(c.components) for c in planned))
    click.echo(f"{'COMBINATION'.ljust(width)}  {'IMAGES'.ljust(7)}  RESULT")

    def row(result) -> None:
        combo = result.combination
        status = result.status + (f" ({result.detail})" if result.detail else "")
        colour = {FAILED: "red", REFUSED: "yellow"}.get(result.status)
        click.echo(f"{combo.components.ljust(width)}  {combo.image.ljust(7)}  " + click.style(status, fg=colour))

    with warnings.catch_warnings():
        if not verbose:  # quiet by default: a table, not the libraries' deprecation notices
            warnings.simplefilter("ignore")
        results = check(registry, kind, name, progress=row)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", REFUSED, FAILED)}
    click.echo(f"{len(results)} combinations: {counts['ok']} ok, {counts[REFUSED]} refused, {counts[FAILED]} failed")
    if counts[FAILED]:
        raise click.exceptions.Exit(1)
