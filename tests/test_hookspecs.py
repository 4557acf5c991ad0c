"""Meta-tests: every hook is documented with an example, the example really works, and is tested.

The examples in metareg/hookspecs.py are the plugin contract, so they run here: each is
written out as a small plugin package, registered, and put through metareg.testing's
contract check for its kind.
"""
from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path

import pytest

from metareg import hookspecs
from metareg.plugins import load_plugins, set_plugins
from metareg.registry import Registry
from metareg.testing import check_component

HOOKS = sorted(hookspecs.HOOK_KINDS)
TESTS = Path(__file__).parent


def example(hook: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and "Example::" in doc, f"{hook} has no 'Example::' section in its docstring"
    return textwrap.dedent(doc.split("Example::", 1)[1])


def test_hookspecs_module_defines_exactly_the_four_kinds():
    specs = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "metareg_spec"))
    assert specs == HOOKS == ["metareg_backbones", "metareg_datasets", "metareg_strategies", "metareg_transforms"]


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
    assert provided.kind == hookspecs.HOOK_KINDS[hook]
    assert Registry(plugins).get(provided.kind, provided.record.name) is provided
    check_component(provided.kind, provided.record.name)
    for mod in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[mod]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test_file_besides_this_one(hook):
    users = [p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name and hook in p.read_text()]
    fixtures = [p for p in (TESTS / "fixtures").rglob("*.py") if hook in p.read_text()]
    assert users or fixtures, f"no test or test fixture implements or calls {hook}"
