"""The ``metareg`` command line, one module per command group.

- :mod:`metareg.cli.app`: the group, its global options, lazy subcommands, ``main``;
- :mod:`metareg.cli.catalogue`: ``list`` and ``info``;
- :mod:`metareg.cli.train`: ``run`` and ``eval`` (settings become flags);
- :mod:`metareg.cli.deploy`: ``predict`` and ``export``;
- :mod:`metareg.cli.runs`: ``runs`` and ``compare``;
- :mod:`metareg.cli.check`: ``check``;
- :mod:`metareg.cli.new_plugin`: ``new-plugin``.

Every command is re-entrant: Lightning's ``ddp`` launcher re-executes the same
command line in each process (see :mod:`metareg.rundir`).
"""
from metareg.cli import catalogue as _catalogue  # noqa: F401 - registers `list` and `info` on the group
from metareg.cli.app import cli, main

__all__ = ["cli", "main"]
