"""The ``metareg`` group: global options, lazy subcommands, errors as one line and exit 2.

Every command is re-entrant: Lightning's ``ddp`` launcher re-executes the same
command line in each process, so nothing here may depend on running only once
(the run directory, for one, is agreed through the environment; see run.py).
"""
from __future__ import annotations

import os

import click

import metareg
from metareg.errors import MetaregError

# Subcommands that live in their own modules, imported only when invoked (or for
# `--help`), so that `metareg list` never pays for torch or Lightning.
_LAZY_COMMANDS = {
    "run": "metareg.cli.train:run_cmd",
    "eval": "metareg.cli.train:eval_cmd",
    "new-plugin": "metareg.cli.new_plugin:new_plugin_cmd",
    "predict": "metareg.cli.deploy:predict_cmd",
    "export": "metareg.cli.deploy:export_cmd", "enroll": "metareg.cli.enroll:enroll_cmd",
    "check": "metareg.cli.check:check_cmd", "serve": "metareg.cli.serve:serve_cmd",
    "runs": "metareg.cli.runs:runs_cmd", "compare": "metareg.cli.runs:compare_cmd",
    "sweep": "metareg.cli.experiments:sweep_cmd", "table": "metareg.cli.experiments:table_cmd",
    "recipes": "metareg.cli.recipes:recipes_cmd", "reproduce": "metareg.cli.recipes:reproduce_cmd",
    "shard": "metareg.cli.shard:shard_cmd",
}


class _Group(click.Group):
    """Loads lazy subcommands; turns :class:`MetaregError` into a message and exit code 2."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self._available()})

    @staticmethod
    def _available():
        import importlib.util

        return [n for n, ref in _LAZY_COMMANDS.items() if importlib.util.find_spec(ref.split(":")[0]) is not None]

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self._available():
            import importlib

            module, attr = _LAZY_COMMANDS[name].split(":")
            cmd = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MetaregError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(metareg.__version__, "--version", prog_name="metareg")
@click.option("--strict", is_flag=True, help="Fail on any plugin error (or set METAREG_STRICT=1).")
@click.option("--load-plugins", metavar="NAMES", help="Load only these plugins, comma-separated (METAREG_PLUGINS).")
@click.option("--disable-plugins", metavar="NAMES",
              help="Skip these plugins, comma-separated (METAREG_DISABLE_PLUGINS).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show Lightning's banners and every library warning (or set METAREG_VERBOSE=1).")
def cli(strict: bool, load_plugins: str | None, disable_plugins: str | None, verbose: bool) -> None:
    """metareg: few-shot meta-learning with pluggable backbones, datasets, transforms and strategies."""
    # Environment, not globals: DDP worker processes inherit the same switches.
    if strict:
        os.environ["METAREG_STRICT"] = "1"
    if verbose:
        os.environ["METAREG_VERBOSE"] = "1"  # metareg.quiet.VERBOSE_ENV; that module needs Lightning
    if load_plugins is not None:
        os.environ["METAREG_PLUGINS"] = load_plugins
    if disable_plugins is not None:
        os.environ["METAREG_DISABLE_PLUGINS"] = disable_plugins
    if os.environ.get("METAREG_PLUGINS", "").strip() or os.environ.get("METAREG_DISABLE_PLUGINS", "").strip():
        # Load now, so that a selection naming no plugin is refused before any command starts work.
        from metareg.plugins import get_plugins

        unknown = get_plugins().unknown_disabled
        if unknown:
            click.echo(
                f"Warning: --disable-plugins / METAREG_DISABLE_PLUGINS names {', '.join(map(repr, unknown))}, "
                f"which matches no installed plugin (see `metareg list --plugins`)",
                err=True,
            )


def main(argv=None) -> None:
    cli.main(args=argv, prog_name="metareg")


