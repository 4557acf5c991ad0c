"""Meta-tests: every hook is documented with an example, the example really works, and is tested.

The examples in metareg/hookspecs.py are the plugin contract, so they run here: each is
written out as a small plugin package, registered, and put through metareg.testing's
contract check for its kind.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

from metareg import hookspecs, kinds
from metareg.config import RunConfig
from metareg.plugins import load_plugins, set_plugins
from metareg.records import ComponentSpec
from metareg.registry import Registry
from metareg.testing import check_component

HOOKS = sorted(k.hook for k in kinds.ALL)
HOOK_KINDS = {k.hook: k.plural for k in kinds.ALL}
TESTS = Path(__file__).parent


def example(hook: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and "Example::" in doc, f"{hook} has no 'Example::' section in its docstring"
    return textwrap.dedent(doc.split("Example::", 1)[1])


def test_hookspecs_module_defines_exactly_the_four_kinds():
    specs = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "metareg_spec"))
    assert specs == HOOKS == ["metareg_backbones", "metareg_datasets", "metareg_strategies", "metareg_transforms"]


def table_problems(kind: kinds.Kind) -> list[str]:
    """What of ``kind``'s row in metareg.kinds names nothing: each spelling must point at the real thing."""
    problems = []
    hook = getattr(hookspecs, kind.hook, None)
    if not hasattr(hook, "metareg_spec"):
        problems.append(f"{kind.hook} is not a hookspec")
    spec = getattr(importlib.import_module("metareg.records"), kind.spec, None)
    if not (isinstance(spec, type) and issubclass(spec, ComponentSpec) and spec.kind == kind.plural):
        problems.append(f"metareg.records.{kind.spec} is not the record class of kind {kind.plural!r}")
    elif hook is not None and kind.spec not in inspect.signature(hook).return_annotation:
        problems.append(f"{kind.hook} is not annotated to yield {kind.spec}")
    if kind.config_field not in RunConfig.keys() or kind.options_field not in RunConfig.keys():
        problems.append(f"RunConfig lacks {kind.config_field!r} or {kind.options_field!r}")
    if kind.cli_flag != "--" + kind.options_field.replace("_options", "-opt"):
        problems.append(f"{kind.cli_flag} is not the flag of {kind.options_field}")
    if not callable(getattr(importlib.import_module("metareg.testing"), kind.check, None)):
        problems.append(f"metareg.testing has no {kind.check}")
    if kinds.get(kind.singular) is not kind or kinds.get(kind.plural.upper()) is not kind:
        problems.append(f"kinds.get does not find {kind.singular!r} / {kind.plural!r}")
    return problems


@pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.singular)
def test_kinds_table_names_real_hooks_records_settings_and_checks(kind):
    assert table_problems(kind) == []


@pytest.mark.parametrize("field, wrong", [("hook", "metareg_backbone"), ("spec", "DatasetSpec"),
                                          ("options_field", "backbone_opts"), ("check", "check_backbones"),
                                          ("cli_flag", "--backbones-opt")])
def test_kinds_table_check_catches_a_misspelt_row(field, wrong):
    broken = dataclasses.replace(kinds.BACKBONE, **{field: wrong})
    assert table_problems(broken), f"a row with {field}={wrong!r} passed"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_example_is_a_working_plugin(hook, tmp_path, monkeypatch):
    text = example(hook)
    # "# my_plugin/<module>.py" separates the plugin module from the component's module.
    parts = re.split(r"^# my_plugin/(\w+)\.py\n", text, flags=re.M)
    assert len(parts) == 3, f"{hook}: the example must show plugin code, then '# my_plugin/<module>.py' code"
    plugin_code, module_name, module_code = parts
    package = f"hookexample_{hook}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "plugin.py").write_text(plugin_code.replace("my_plugin.", f"{package}."))
    (root / f"{module_name}.py").write_text(module_code)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = importlib.import_module(f"{package}.plugin")
    plugins = load_plugins([], extra=[("example", plugin)], strict=True)
    set_plugins(plugins)
    (provided,) = plugins.provided
    assert provided.kind == HOOK_KINDS[hook]
    assert Registry(plugins).get(provided.kind, provided.record.name) is provided
    check_component(provided.kind, provided.record.name)
    for mod in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[mod]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test_file_besides_this_one(hook):
    users = [p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name and hook in p.read_text()]
    fixtures = [p for p in (TESTS / "fixtures").rglob("*.py") if hook in p.read_text()]
    assert users or fixtures, f"no test or test fixture implements or calls {hook}"
