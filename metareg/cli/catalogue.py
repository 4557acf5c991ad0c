"""`metareg list` and `metareg info`: what is installed, without importing torch."""
from __future__ import annotations

import fnmatch
import json

import click

import metareg
from metareg import kinds
from metareg.cli.app import cli
from metareg.errors import MetaregError


def _registry():
    from metareg.registry import Registry

    return Registry.current()


def _component_dict(p) -> dict:
    r = p.record
    return {
        "name": r.name,
        "qualified_name": p.qualified_name,
        "aliases": list(r.aliases),
        "summary": r.summary,
        "factory": r.factory_ref,
        "plugin": p.plugin.name,
        "distribution": p.plugin.distribution,
        "version": p.plugin.version,
    }


@cli.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in README.md).")
@click.option("--plugins", "by_plugin", is_flag=True, help="One row per plugin instead of per component.")
@click.option("-v", "--verbose", is_flag=True, help="Show full tracebacks of broken plugins.")
def list_cmd(kind: str | None, pattern: str | None, as_json: bool, by_plugin: bool, verbose: bool) -> None:
    """List installed components (KIND: backbones, datasets, strategies, transforms).

    PATTERN filters names with shell wildcards (``res*``) or as a substring.
    """
    from metareg.registry import normalise_kind

    reg = _registry()
    if kind is not None and pattern is None and not kinds.is_kind(kind):
        kind, pattern = None, kind  # `metareg list res*` filters every kind
    shown = [normalise_kind(kind)] if kind else list(kinds.PLURALS)

    def keep(name: str) -> bool:
        return pattern is None or fnmatch.fnmatch(name, pattern) or pattern in name

    plugins = reg.plugins.plugins
    if by_plugin:
        rows = [p.as_dict() for p in plugins if keep(p.name)]
        if as_json:
            click.echo(json.dumps({"schema": 1, "metareg_version": metareg.__version__, "plugins": rows}, indent=2))
            return
        table = [("PLUGIN", "DISTRIBUTION", "VERSION", "ENTRY POINT", "STATUS", "HOOKS")]
        for p in plugins:
            if keep(p.name):
                hooks = ",".join(h.removeprefix("metareg_") for h in p.hooks) or "-"
                status = p.status if p.status != "broken" else f"broken ({p.stage}: {p.error})"
                table.append((p.name, p.distribution or "-", p.version or "-", p.entry_point, status, hooks))
        print_table(table)
        return

    components = {k: [c for c in reg.components(k) if keep(c.record.name)] for k in shown}
    broken = reg.plugins.broken
    if as_json:
        doc = {
            "schema": 1,
            "metareg_version": metareg.__version__,
            "components": {k: [_component_dict(c) for c in cs] for k, cs in components.items()},
            "broken": [p.as_dict() for p in broken],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    for k, cs in components.items():
        click.secho(k, bold=True)
        if not cs:
            click.echo("  (none)")
        conflicts = reg.conflicts(k)
        rows = []
        for c in cs:
            name = c.record.name + (f" ({', '.join(c.record.aliases)})" if c.record.aliases else "")
            clashing = [a for a in c.record.aliases if a in conflicts]
            if c.record.name in conflicts:
                name = f"{c.qualified_name}  [name conflict]"
            elif clashing:
                name = f"{c.qualified_name} ({', '.join(c.record.aliases)})  [alias conflict: {', '.join(clashing)}]"
            provider = f"{c.plugin.distribution or c.plugin.name} {c.plugin.version or ''}".strip()
            rows.append(("  " + name, provider, c.record.summary))
        print_table(rows)
    if broken:
        click.secho("broken plugins", bold=True, fg="red")
        for p in broken:
            click.echo(f"  {p.label}: failed at {p.stage}: {p.error}")
            if verbose and p.traceback:
                click.echo("    " + p.traceback.replace("\n", "\n    "))
        click.echo("  (run with --strict or METAREG_STRICT=1 to make this an error; -v for tracebacks;")
        click.echo("   --disable-plugins DISTRIBUTION to skip one)")


def print_table(rows) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [str(r[-1])]
        click.echo("  ".join(cells).rstrip())


@cli.command("info")
@click.argument("kind")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_cmd(kind: str, name: str, as_json: bool) -> None:
    """Show a component's options: types, defaults and help."""
    from metareg.options import describe, summary

    entry = _registry().get(kind, name)
    of_kind = kinds.get(entry.kind)
    try:
        factory = entry.record.load()
    except Exception as exc:  # noqa: BLE001 - a broken lazy factory is the plugin's fault; say whose
        raise MetaregError(
            f"{of_kind.singular} {entry.record.name!r} from {entry.plugin.label} cannot be imported: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    options = describe(factory, kind=of_kind)
    if as_json:
        doc = _component_dict(entry) | {
            "kind": entry.kind,
            "doc": summary(factory),
            "options": [o.as_dict() for o in options],
        }
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    click.secho(f"{entry.record.name}  ({of_kind.singular})", bold=True)
    click.echo(f"  provided by {entry.plugin.label}, qualified name {entry.qualified_name}")
    if entry.record.aliases:
        click.echo(f"  aliases: {', '.join(entry.record.aliases)}")
    click.echo(f"  {entry.record.summary}")
    doc = summary(factory)
    if doc and doc != entry.record.summary:
        click.echo(f"  {doc}")
    click.echo("")
    if not options:
        click.echo("  no options")
        return
    click.echo(f"  options (set with {of_kind.cli_flag} NAME=VALUE, or in the config file):")
    rows = [("  NAME", "TYPE", "DEFAULT", "HELP")]
    for o in options:
        rows.append(("  " + o.name, o.type_name, "(required)" if o.required else repr(o.default), o.help))
    print_table(rows)
