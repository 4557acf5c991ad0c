"""The protocols the core declares for its plugins: metareg.Backbone, metareg.DatasetInfo (with its
ImageNet flag), metareg.Pretraining, and the core's own transform `none`.

Backbones are checked from the registry, so a newly installed backbone is covered without editing
this file. Every check is also shown refusing a broken input.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import metareg
from metareg.cli import cli
from metareg.dataset_info import DatasetInfo
from metareg.options import bind, describe
from metareg.plugins import load_plugins, set_plugins
from metareg.protocols import check_backbone, pretraining_leak
from metareg.registry import Registry

SIZE = 84  # every backbone takes 84-pixel images (learn2learn's WRN-28 takes nothing smaller)


def _registry() -> Registry:
    return Registry(load_plugins(strict=False))


BACKBONES = [pytest.param(p.qualified_name, id=p.qualified_name) for p in _registry().components("backbones")]


def _build(qualified: str, channels: int = 3, **options):
    record = _registry().get("backbones", qualified).record
    factory = record.load()
    kwargs = bind(factory, {**record.test_options, **options}, component=qualified,
                  injected={"channels": channels, "image_size": SIZE})
    return factory(**kwargs)


# ------------------------------------------------------------------------------ the Backbone protocol


@pytest.mark.parametrize("qualified", BACKBONES)
def test_every_registered_backbone_keeps_the_backbone_protocol(qualified):
    net = _build(qualified)
    assert isinstance(net, metareg.Backbone) and check_backbone(net, qualified) is net
    assert net.out_features > 0  # that forward gives (N, out_features): tests/test_contracts.py, every backbone
    # Provenance: a backbone built without weights says so (or says nothing).
    assert not isinstance(net, metareg.Pretrained) or net.pretrained_on is None
    if isinstance(net, metareg.EpochHook):
        net.metareg_epoch_start(0)  # the core calls it before every training epoch: it must take an epoch number
        assert any(p.requires_grad for p in net.parameters()), "the default schedule trains the backbone"


class _NoFeatures(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class _TextFeatures(_NoFeatures):
    out_features = "64"


@pytest.mark.parametrize("broken, needle", [
    (_NoFeatures(), "does not set an integer `out_features`"),
    (_TextFeatures(), "does not set an integer `out_features`"),
    (lambda x: x, "returned function, not an nn.Module"),
])
def test_a_backbone_breaking_the_protocol_is_refused_by_name(broken, needle):
    assert not isinstance(broken, metareg.Backbone) or not isinstance(broken.out_features, int)
    with pytest.raises(metareg.MetaregError) as info:
        check_backbone(broken, "mynet")
    assert needle in str(info.value) and "'mynet'" in str(info.value) and "\n" not in str(info.value)


class _BrokenBackbonePlugin:
    @metareg.hookimpl
    def metareg_backbones(self):
        yield metareg.BackboneSpec("nofeatures", lambda channels=1, image_size=28: _NoFeatures(), summary="broken")


def _arrays(**kwargs) -> metareg.FewShotDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(12).repeat_interleave(4)
    return metareg.FewShotDataset.from_arrays(torch.randint(0, 255, (48, 1, 16, 16), generator=g, dtype=torch.uint8),
                                              labels, name="arrays", **kwargs)


def test_a_run_with_a_backbone_without_out_features_stops_before_training(tmp_path):
    registry = Registry(load_plugins(extra=[("brokenbb", _BrokenBackbonePlugin())]))
    with pytest.raises(metareg.MetaregError, match="backbone 'nofeatures' does not set an integer `out_features`"):
        metareg.train(dataset=_arrays(), backbone="nofeatures", registry=registry, output_dir=str(tmp_path / "run"),
                      ways=2, shots=1, queries=1, test_queries=1)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------ the ImageNet flag


@pytest.fixture
def imagenet_conv4(tmp_path):
    """conv4 with weights from a file whose name says ImageNet: pretrained_on == "imagenet"."""
    path = tmp_path / "conv4-imagenet.pt"
    torch.save(_build("backbones:conv4", channels=1, hidden=8).state_dict(), path)
    return {"hidden": 8, "pretrained": str(path)}


def _model_warnings(backbone_options: dict, info) -> list[str]:
    from metareg.build import build_model, resolve_all
    from metareg.config import RunConfig

    config = RunConfig.from_sources({"backbone": "conv4", "backbone_options": backbone_options, "ways": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(resolve_all(config, dataset=False), config, 1, SIZE, 6, "mine", info)
    return [str(w.message) for w in caught if "ImageNet" in str(w.message)]


def test_imagenet_weights_warn_only_on_a_dataset_flagged_imagenet_derived(imagenet_conv4):
    flagged = _arrays(info=metareg.DatasetInfo(imagenet_derived=True))
    plain = _arrays()
    assert flagged.info.imagenet_derived and not plain.info.imagenet_derived
    (message,) = _model_warnings(imagenet_conv4, flagged.info)
    assert "backbone 'conv4' carries ImageNet-pretrained weights" in message and "'mine'" in message
    assert _model_warnings(imagenet_conv4, plain.info) == []
    assert _model_warnings({"hidden": 8}, flagged.info) == []  # random weights: nothing leaks
    # A checkpoint holds the flag as a plain dict, so evaluating it warns again.
    assert len(_model_warnings(imagenet_conv4, dict(flagged.info))) == 1
    assert _model_warnings(imagenet_conv4, {"note": "an old checkpoint's info"}) == []


def test_the_leak_check_reads_provenance_and_flag_not_names():
    class Net(nn.Module):
        out_features = 4
        pretrained_on = "ImageNet"

    flagged = {"imagenet_derived": True}
    assert pretraining_leak(Net(), "net", flagged, "miniimagenet")
    assert pretraining_leak(Net(), "net", {}, "miniimagenet") is None  # the name alone decides nothing
    Net.pretrained_on = "places365"
    assert pretraining_leak(Net(), "net", flagged, "x") is None


def _imagenet_flag(name: str, options: dict) -> bool:
    factory = _registry().get("datasets", name).record.load()
    return factory(**bind(factory, options, component=name)).info.imagenet_derived


def test_the_imagenet_datasets_carry_the_flag_and_others_do_not(tmp_path):
    from tests.test_contracts import write_mini_imagenet_pickles

    write_mini_imagenet_pickles(tmp_path / "mini", size=16)
    assert _imagenet_flag("miniimagenet", {"root": str(tmp_path / "mini"), "image_size": 16})
    synthetic = pytest.importorskip("metareg_learn2learn.synthetic")
    assert _imagenet_flag("l2l-miniimagenet", {"root": str(synthetic.write_mini_imagenet(tmp_path / "l2l", size=16))})
    tiered = synthetic.write_tiered_imagenet(tmp_path / "l2l", size=16)
    assert _imagenet_flag("l2l-tieredimagenet", {"root": str(tiered), "image_size": 16})
    assert not _imagenet_flag("l2l-cifarfs", {"root": str(synthetic.write_cifarfs(tmp_path / "l2l"))})


# ------------------------------------------------------------------------------ DatasetInfo


@pytest.mark.parametrize("info, needle", [
    ({"invrt": True}, "info key 'invrt' is not a DatasetInfo field (did you mean 'invert'?"),
    ({"alphabets": ["a"]}, "put dataset-specific facts in details={...}"),
    ({"invert": "yes"}, "DatasetInfo.invert must be True or False, got 'yes'"),
    ({"resample": "smooth"}, "DatasetInfo.resample 'smooth' is not a PIL filter; use one of nearest, box"),
    ({"crop": "centre"}, "DatasetInfo.crop 'centre' is not one of center, none"),
    ({"details": {"invert": True}}, "details key 'invert' is a field of its own"),
    (["invert"], "info must be a metareg.DatasetInfo, got list"),
])
def test_a_dataset_with_a_misspelt_or_mistyped_info_is_refused_in_one_line(info, needle):
    with pytest.raises(metareg.DataError) as caught:
        _arrays(info=info)
    message = str(caught.value)
    assert message.startswith("dataset 'arrays': ") and needle in message and "\n" not in message


class _BadInfoPlugin:
    @metareg.hookimpl
    def metareg_datasets(self):
        yield metareg.DatasetSpec("badinfo", lambda: _arrays(info={"invrt": True}), summary="a misspelt info key")


def test_metareg_run_refuses_a_dataset_with_a_misspelt_info_key(tmp_path):
    set_plugins(load_plugins(extra=[("badinfo", _BadInfoPlugin())]))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--dataset", "badinfo", "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert "info key 'invrt' is not a DatasetInfo field (did you mean 'invert'?" in errors[0]
    assert "Traceback" not in result.output and not out.exists()


def test_old_checkpoint_info_dicts_read_back_unchanged():
    old = {"alphabets": {"train": ["Latin"]}, "ink": "white on black (255 = stroke)", "invert": True,
           "resample": "box", "note": "a note"}
    info = DatasetInfo.from_saved(old)
    assert (info.invert, info.resample, info.crop, info.imagenet_derived) == (True, "box", "center", False)
    assert info.details == {"alphabets": {"train": ["Latin"]}, "ink": "white on black (255 = stroke)"}
    assert dict(info) == old and info["ink"] == old["ink"] and info.get("crop", "center") == "center"
    # As prediction always did: a filter it does not know reads as bilinear, any crop but "none" as centre.
    lenient = DatasetInfo.from_saved({"resample": "BOX?", "crop": "whatever", "invert": 1})
    assert (lenient.resample, lenient.crop, lenient.invert) == ("bilinear", "center", True)
    assert DatasetInfo.from_saved(None) == DatasetInfo() == {}


def test_the_saved_form_reads_back_and_only_fields_pass_the_strict_reading():
    record = DatasetInfo(invert=True, resample="box", details={"rotations": False})
    assert DatasetInfo.from_saved(dict(record)) == record
    fields_only = DatasetInfo(invert=True, resample="box")
    assert DatasetInfo.of(dict(fields_only), "dataset 'x'") == fields_only
    with pytest.raises(metareg.DataError, match="info key 'rotations' is not a DatasetInfo field"):
        DatasetInfo.of(dict(record), "dataset 'x'")


# ------------------------------------------------------------------------------ the shared option group


GROUP = ["pretrained", "pretrained_on", "finetune", "unfreeze_epoch"]


def _group_help() -> dict[str, str]:
    @metareg.pretraining_options
    def probe(*, channels: int = 1, image_size: int = 28, pretraining: metareg.Pretraining):
        """A probe."""

    return {o.name: o.help for o in describe(probe) if o.name in GROUP}


@pytest.mark.parametrize("qualified", BACKBONES)
def test_backbones_offering_pretrained_weights_share_one_documented_group(qualified):
    factory = _registry().get("backbones", qualified).record.load()
    options = {o.name: o for o in describe(factory)}
    if not set(GROUP) & set(options):
        pytest.skip(f"{qualified} offers no pretrained weights")
    group = _group_help()
    assert {name: options[name].help for name in GROUP} == group
    assert options["finetune"].type_name == "{no_freeze|freeze|freeze_unfreeze}"
    doc = json.loads(CliRunner().invoke(cli, ["info", "backbones", qualified, "--json"]).output)
    assert [o["name"] for o in doc["options"]][-4:] == GROUP


def test_the_group_decorator_refuses_a_factory_that_cannot_take_it():
    with pytest.raises(TypeError, match="takes a keyword argument `pretraining`"):
        @metareg.pretraining_options
        def no_group(*, channels: int = 1):
            """No pretraining parameter."""

    with pytest.raises(TypeError, match="option 'finetune' belongs to metareg.Pretraining"):
        @metareg.pretraining_options
        def twice(*, finetune: str = "freeze", pretraining: metareg.Pretraining):
            """finetune declared again."""


@pytest.mark.parametrize("group, message", [
    ({"finetune": "thaw"}, "finetune: 'thaw' is not one of no_freeze, freeze, freeze_unfreeze"),
    ({"unfreeze_epoch": -1}, "unfreeze_epoch must be >= 0, got -1"),
    ({"pretrained_on": "imagenet"}, "net: pretrained_on='imagenet' needs pretrained=PATH_OR_NAME"),
])
def test_the_group_refuses_bad_settings(group, message):
    with pytest.raises(metareg.OptionError) as caught:
        metareg.Pretraining(**group).check("net")
    assert str(caught.value) == message


def test_the_group_schedule_depends_only_on_the_epoch():
    thaw = metareg.Pretraining(pretrained="w.pt", finetune="freeze_unfreeze", unfreeze_epoch=2)
    assert [thaw.frozen_at(e) for e in (None, 0, 1, 2, 9)] == [True, True, True, False, False]
    assert all(metareg.Pretraining(finetune="freeze").frozen_at(e) for e in (None, 0, 99))
    assert not any(metareg.Pretraining().frozen_at(e) for e in (None, 0, 99))


# ------------------------------------------------------------------------------ the core's own transform


def test_the_default_transform_is_the_cores_own_and_listed_with_its_package():
    doc = json.loads(CliRunner().invoke(cli, ["list", "transforms", "--json"]).output)
    (none,) = [t for t in doc["components"]["transforms"] if t["name"] == "none"]
    assert (none["plugin"], none["distribution"], none["factory"]) == ("core", "metareg-core",
                                                                        "metareg.transform:identity")
    assert metareg.RunConfig().transform == "none"
    transform = _registry().get("transforms", "identity").record.load()(channels=1, image_size=8)
    x = torch.rand(2, 1, 8, 8)
    assert isinstance(transform, metareg.Transform) and transform(x) is x and transform.evaluate(x) is x
