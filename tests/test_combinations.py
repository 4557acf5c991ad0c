"""The registry is the test matrix across kinds: every installed strategy with every backbone,
every transform, on 1x28x28 grey and 3x32x32 RGB synthetic images (metareg/combinations.py).

Each combination is one test case, parametrized from the registry, so a newly installed
component (learn2learn's, a third party's) is covered without editing this file. Also here:
`metareg check` through the CLI, a capability refusal in `metareg run`, and a deliberately
broken backbone that `check` must report as failed.
"""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import metareg
from metareg.cli import cli
from metareg.combinations import FAILED, OK, REFUSED, Combination, combinations, run_combination
from metareg.plugins import load_plugins, set_plugins
from metareg.registry import Registry
from metareg.testing import check_combinations


def _installed() -> Registry:
    return Registry(load_plugins(strict=False))


@pytest.fixture(scope="module")
def installed() -> Registry:
    return _installed()


@pytest.mark.parametrize("combo", [pytest.param(c, id=c.label.replace(" ", "")) for c in combinations(_installed())])
def test_combination(installed, combo):
    result = run_combination(installed, combo)
    assert result.status != FAILED, str(result)
    if result.status == REFUSED:
        # A refusal names who refuses; an empty or anonymous reason would hide a bug.
        assert any(name.rpartition(":")[2] in result.detail for _, name in combo.parts), str(result)


def test_matrix_covers_every_installed_component_on_both_image_kinds(installed):
    combos = combinations(installed)
    for kind in ("strategies", "backbones", "transforms"):
        for p in installed.components(kind):
            kinds = {c.image for c in combos if (kind, p.qualified_name) in c.parts}
            assert kinds == {"1x28x28", "3x32x32"}, f"{p.qualified_name} runs on {kinds}"


# ---------------------------------------------------------------------- components made for these tests


class _Net(nn.Module):
    def __init__(self, channels: int, width: int, broken: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.out_features, self.broken = width, broken

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.broken:
            raise RuntimeError("deliberately broken forward")
        return self.conv(x).mean((2, 3))


def plain_backbone(*, channels: int = 3, image_size: int = 28, width: int = 8) -> nn.Module:
    """A one-conv backbone that declares no capability.

    width: filters.
    """
    return _Net(channels, width)


def broken_backbone(*, channels: int = 3, image_size: int = 28) -> nn.Module:
    """Declares everything, and raises in forward."""
    return _Net(channels, 4, broken=True)


class _TestPlugin:
    @metareg.hookimpl
    def metareg_backbones(self):
        yield metareg.BackboneSpec("plainnet", plain_backbone, summary="no capabilities", test_options={"width": 4})
        yield metareg.BackboneSpec("brokennet", broken_backbone, summary="raises", provides={"functional"})


@pytest.fixture
def with_test_plugin():
    """First-party plugins plus the test plugin, as the process-wide set the CLI uses."""
    plugins = load_plugins(extra=[("testplugin", _TestPlugin())], only=["strategies", "backbones", "datasets",
                                                                          "kornia", "testplugin"])
    set_plugins(plugins)
    return Registry(plugins)


def test_check_reports_a_broken_backbone_as_failed_and_exits_1(with_test_plugin):
    result = CliRunner().invoke(cli, ["check", "backbone", "brokennet"])
    assert result.exit_code == 1, result.output
    rows = [line for line in result.output.splitlines() if "brokennet" in line]
    strategies = with_test_plugin.names("strategies")
    assert len(rows) == 2 * len(strategies)
    assert all("failed" in row and "deliberately broken forward" in row for row in rows), rows
    assert f"{len(rows)} combinations: 0 ok, 0 refused, {len(rows)} failed" in result.output


def test_a_missing_capability_is_refused_by_check_naming_both(with_test_plugin):
    results = {(r.combination.components, r.combination.image): r
               for r in check_combinations("backbone", "plainnet", registry=with_test_plugin)}
    refused = [r for r in results.values() if r.status == REFUSED]
    assert {r.combination.components for r in refused} == {"maml + plainnet"}
    assert all("'maml'" in r.detail and "'plainnet'" in r.detail and "'functional'" in r.detail for r in refused)
    assert all(r.status == OK for r in results.values() if r not in refused)


def test_run_refuses_a_missing_capability_before_any_work(with_test_plugin, tmp_path):
    out = tmp_path / "run"
    # A tiny budget, so that a run which wrongly goes ahead fails this test quickly.
    tiny = ["--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6", "--ways", "3", "--shots", "1",
            "--queries", "2", "--test-queries", "2", "--meta-batch-size", "1", "--epoch-length", "1",
            "--max-epochs", "1", "--test-num-tasks", "2", "--val-num-tasks", "2", "--no-progress"]
    result = CliRunner().invoke(cli, ["run", "--strategy", "maml", "--backbone", "plainnet", *tiny,
                                      "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: strategy 'maml' cannot run with backbone 'plainnet'")
    assert "'functional'" in lines[0]
    assert not out.exists()


def test_check_combinations_raises_naming_the_failures(with_test_plugin):
    with pytest.raises(AssertionError) as info:
        check_combinations("backbone", "brokennet", registry=with_test_plugin)
    n = 2 * len(with_test_plugin.names("strategies"))
    assert str(info.value).startswith(f"{n} of {n} combinations failed:\n")
    assert "\n  maml + brokennet @ 1x28x28: failed (training step: RuntimeError: deliberately broken forward)" \
        in str(info.value)


def test_cli_check_one_strategy_against_every_backbone():
    # As a user would type `METAREG_PLUGINS=strategies,backbones metareg check strategy prototypicalnetworks`.
    env = {"METAREG_PLUGINS": "strategies,backbones"}
    result = CliRunner(env=env).invoke(cli, ["check", "strategy", "prototypicalnetworks"])
    assert result.exit_code == 0, result.output
    backbones = Registry(load_plugins(only=["strategies", "backbones"])).names("backbones")
    for backbone in backbones:
        for image in ("1x28x28", "3x32x32"):
            assert any(line.split()[:5] == ["prototypicalnetworks", "+", backbone, image, "ok"]
                       for line in result.output.splitlines()), f"no ok row for {backbone} {image}:\n{result.output}"
    assert f"{2 * len(backbones)} combinations: {2 * len(backbones)} ok, 0 refused, 0 failed" in result.output


def test_cli_check_needs_a_name_and_a_known_component():
    assert CliRunner().invoke(cli, ["check", "backbone"]).exit_code == 2
    result = CliRunner().invoke(cli, ["check", "strategy", "protonett"])
    assert result.exit_code == 2 and "Did you mean 'protonet'" in result.output


def test_records_validate_capabilities_and_test_options():
    with pytest.raises(ValueError, match="'<kind>:<capability>'"):
        metareg.StrategySpec("s", "m:f", requires={"functional"})
    with pytest.raises(ValueError, match="capability strings"):
        metareg.BackboneSpec("b", "m:f", provides="functional")
    with pytest.raises(ValueError, match="test_options must be a mapping"):
        metareg.BackboneSpec("b", "m:f", test_options=[("width", 4)])
    spec = metareg.BackboneSpec("b", "m:f", test_options={"width": 4}, provides=["functional"])
    assert hash(spec) and spec.provides == frozenset({"functional"})
    with pytest.raises(TypeError):
        spec.test_options["width"] = 8  # a record is frozen, its options too


def test_combination_label():
    c = Combination((("strategies", "strategies:maml"), ("backbones", "backbones:conv4")), 1, 28, ("maml", "conv4"))
    assert c.label == "maml + conv4 @ 1x28x28"
