"""`metareg new-plugin`: the command around :mod:`metareg.scaffold`."""
from __future__ import annotations

from pathlib import Path

import click

from metareg.scaffold import KIND_CHOICES, validate_name, write


@click.command("new-plugin")
@click.argument("name")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(KIND_CHOICES),
    help="Kind of example component to include; repeat for several (default: all four).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder in which to create metareg-NAME/.",
)
def new_plugin_cmd(name: str, kinds: tuple[str, ...], output: Path) -> None:
    """Create a plugin package metareg-NAME with example components and tests.

    NAME is lower case, letters, digits, '-' and '_' (e.g. my-backbones): the package
    is the distribution metareg-NAME, imported as metareg_NAME, registered as the
    entry point NAME in the `metareg` group.
    """
    kinds = kinds or KIND_CHOICES
    target = write(name, kinds, output)
    ident = validate_name(name)
    click.echo(f"Created {target}/ ({', '.join(k for k in KIND_CHOICES if k in kinds)}):")
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(target)}")
    click.echo("")
    click.echo("Next steps:")
    click.echo(f"  pip install -e {target}")
    click.echo(f"  metareg list {name}-*")
    click.echo(f"  pytest {target / 'tests'}")
    click.echo(f"Then edit metareg_{ident}/ and see docs/writing-plugins.md.")
