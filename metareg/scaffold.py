"""``metareg new-plugin``: write a ready-to-install plugin package.

The package follows the naming convention (distribution ``metareg-NAME``, import
``metareg_NAME``, entry point ``NAME`` in the ``metareg`` group) and holds one small,
working example component of each kind asked for, plus tests that run the
:mod:`metareg.testing` contract checks on them. Only the standard library and click
are imported here: the command must not pay for torch.
"""
from __future__ import annotations

import keyword
import re
import string
from pathlib import Path

from metareg.errors import MetaregError
from metareg.kinds import Kind
from metareg.scaffold_templates import EXAMPLES, PYPROJECT, README

# The kinds new-plugin offers (singular names, as `--kind` takes them): every kind has an example.
KIND_CHOICES = tuple(kind.singular for kind in EXAMPLES)


class ScaffoldError(MetaregError):
    """The plugin cannot be written (bad name, existing folder)."""


def validate_name(name: str) -> str:
    """Return the import suffix for ``name`` (``my-thing`` -> ``my_thing``) or raise ScaffoldError."""
    if name.lower().startswith(("metareg-", "metareg_")):
        raise ScaffoldError(
            f"plugin name {name!r}: leave out the 'metareg-' prefix, it is added for you "
            f"(try: metareg new-plugin {name[8:] or 'NAME'})"
        )
    ident = name.replace("-", "_")
    if not name or not ident.isidentifier() or not ident.isascii() or keyword.iskeyword(ident):
        raise ScaffoldError(
            f"plugin name {name!r} is not usable: after replacing '-' with '_' it must be a Python identifier "
            "(letters, digits, '_' and '-', not starting with a digit), e.g. 'my-backbones'"
        )
    if name != name.lower():
        raise ScaffoldError(f"plugin name {name!r}: use lower case (distribution names are), e.g. {name.lower()!r}")
    if name.startswith(("-", "_")) or name.endswith(("-", "_")):
        raise ScaffoldError(f"plugin name {name!r}: must not start or end with '-' or '_'")
    return ident


def _version_bounds() -> str:
    import metareg

    major, minor = (int(p) for p in re.findall(r"\d+", metareg.__version__)[:2])
    upper = f"{major}.{minor + 1}" if major == 0 else f"{major + 1}"
    return f">={major}.{minor},<{upper}"


def render(name: str, kinds: tuple[str, ...]) -> dict[str, str]:
    """The files of the plugin package, as ``{relative path: text}``."""
    ident = validate_name(name)
    chosen = [kind for kind in EXAMPLES if kind.singular in kinds]  # stable order, no repeats
    pkg = f"metareg_{ident}"
    values = {
        "name": name,
        "pkg": pkg,
        "dist": f"metareg-{name}",
        "bounds": _version_bounds(),
        "kinds_text": ", ".join(kind.singular for kind in chosen),
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{pkg}/__init__.py": '"""metareg-$name: a metareg plugin."""\n',
        f"{pkg}/plugin.py": _plugin_module(chosen),
        "tests/test_plugin.py": _tests_module(chosen),
    }
    for kind in chosen:
        files[f"{pkg}/{kind.plural}.py"] = EXAMPLES[kind].source
    return {path: string.Template(text).substitute(values) for path, text in files.items()}


def _plugin_module(chosen: list[Kind]) -> str:
    parts = [
        '"""Registers this plugin\'s components with metareg.\n\n'
        "Factories are lazy ``module:attribute`` strings, so `metareg list` does not import torch.\n"
        'Import only the public ``metareg`` API here (no torch, no metareg.<submodule>)."""\n'
        "import metareg\n"
    ]
    for kind in chosen:
        example = EXAMPLES[kind]
        provides = ", ".join(f'"{p}"' for p in example.provides)
        parts.append(
            "\n\n@metareg.hookimpl\n"
            f"def {kind.hook}():\n"
            f"    yield metareg.{kind.spec}(\n"
            f'        "$name-{example.suffix}",\n'
            f'        "$pkg.{kind.plural}:{example.attr}",\n'
            f'        summary="{example.summary}",\n'
            + (f"        provides={{{provides}}},\n" if provides else "")
            + "    )\n"
        )
    return "".join(parts)


def _tests_module(chosen: list[Kind]) -> str:
    imports = ", ".join(sorted(kind.check for kind in chosen))
    parts = [
        '"""Contract checks from metareg.testing, plus tests of what is specific to this plugin.\n\n'
        "The checks look components up by name among the installed plugins, so install this\n"
        'package first: pip install -e .   then: pytest"""\n'
        "import pytest\n\n"
        "import metareg\n"
        f"from metareg.testing import {imports}\n"
    ]
    for kind in chosen:
        parts.append(EXAMPLES[kind].tests)
    return "".join(parts)


def write(name: str, kinds: tuple[str, ...], output: Path) -> Path:
    """Write the package to ``output/metareg-NAME`` and return that folder."""
    files = render(name, kinds)
    target = Path(output) / f"metareg-{name}"
    if target.exists():
        raise ScaffoldError(
            f"{target} already exists; refusing to overwrite it. Pick another name or --output folder, "
            "or remove the folder first"
        )
    if Path(output).exists() and not Path(output).is_dir():
        raise ScaffoldError(f"--output {output} is a file, not a folder")
    from metareg.files import atomic_directory

    with atomic_directory(target) as staging:  # all files or none, never a half-written package
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return target
