"""Contract tests over every registered backbone, plus pretrained loading and fine-tuning schedules."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

import metareg
from metareg.options import bind
from metareg.plugins import load_plugins
from metareg.registry import Registry

# Small widths keep the CPU suite fast; a backbone not listed here runs with its defaults.
SMALL = {
    "conv4": {"hidden": 8},
    "conv4-omniglot": {"hidden": 8},
    "resnet18": {"width": "8"},
    "resnet12": {"widths": "8,16,16,32"},
    "wrn28": {"depth": "10", "widen_factor": "1"},
}
# The image shapes the datasets produce: Omniglot, miniImageNet / tieredImageNet / CUB, CIFAR-FS / FC100.
SHAPES = [(1, 28), (3, 84), (3, 32)]


def _registry() -> Registry:
    return Registry(load_plugins())


def _names() -> list[str]:
    # First-party backbones, the full shape matrix and vmap; tests/test_contracts.py runs the generic
    # contract over every installed plugin's backbones.
    return [p.record.name for p in _registry().components("backbones") if p.plugin.distribution == "metareg-backbones"]


BACKBONES = _names()


def build(name: str, channels: int, image_size: int, **options):
    entry = _registry().get("backbones", f"backbones:{name}")
    factory = entry.record.load()
    given = {**SMALL.get(name, {}), **options}
    kwargs = bind(factory, given, component=name, injected={"channels": channels, "image_size": image_size})
    return factory(**kwargs)


def test_first_party_backbones_are_registered():
    assert {"conv4", "conv4-omniglot", "resnet12", "resnet18", "wrn28"} <= set(BACKBONES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[1]}")
@pytest.mark.parametrize("name", BACKBONES)
def test_forward_backward_on_every_dataset_shape(name, shape):
    channels, size = shape
    torch.manual_seed(0)
    model = build(name, channels, size)
    assert isinstance(model, nn.Module)
    assert isinstance(model.out_features, int) and model.out_features > 0
    model.train()
    x = torch.rand(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, model.out_features)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, model.out_features)


@pytest.mark.parametrize("name", BACKBONES)
def test_vmap_over_parameter_sets_matches_a_loop(name):
    """MAML runs functional_call under vmap over per-task parameters, after replace_all_batch_norm_modules_."""
    torch.manual_seed(0)
    model = build(name, 1, 28)
    replace_all_batch_norm_modules_(model)
    params = {
        k: torch.stack([v.detach(), v.detach() + 0.01 * torch.randn_like(v)]) for k, v in model.named_parameters()
    }
    buffers = dict(model.named_buffers())
    x = torch.rand(2, 3, 1, 28, 28)

    def run(p, images):
        return functional_call(model, (p, buffers), (images,))

    model.train()
    batched = vmap(run, randomness="different")(params, x)
    assert batched.shape == (2, 3, model.out_features)
    model.eval()  # deterministic: compare with one call per parameter set
    batched = vmap(run)(params, x)
    looped = torch.stack([run({k: v[i] for k, v in params.items()}, x[i]) for i in range(2)])
    torch.testing.assert_close(batched, looped, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # different parameters, different features


def test_dropblock_under_vmap_needs_a_randomness_mode():
    model = build("resnet12", 3, 32, drop_rate="0.2")
    replace_all_batch_norm_modules_(model)
    params = {k: torch.stack([v.detach()] * 2) for k, v in model.named_parameters()}
    x = torch.rand(2, 4, 3, 32, 32)

    def run(p, images):
        return functional_call(model, p, (images,))

    model.train()
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(run)(params, x)
    out = vmap(run, randomness="different")(params, x)
    assert out.shape == (2, 4, 32) and torch.isfinite(out).all()


def test_dropblock_drops_blocks_only_in_training():
    from metareg_backbones.resnet12 import DropBlock

    torch.manual_seed(0)
    drop = DropBlock(0.3, 3)
    x = torch.ones(4, 8, 10, 10)
    out = drop.train()(x)
    zero_fraction = (out == 0).float().mean().item()
    assert 0.1 < zero_fraction < 0.5
    assert abs(out.mean().item() - 1.0) < 1e-4  # kept activations are rescaled
    assert torch.equal(drop.eval()(x), x)


def test_resnet12_is_metaoptnets_shape():
    model = build("resnet12", 3, 84, widths="64,160,320,640")
    assert model.out_features == 640
    assert sum(p.numel() for p in model.parameters()) > 12_000_000  # ~12.4M parameters, as in MetaOptNet
    flat = build("resnet12", 3, 84, widths="8,8,8,16", pooled="false")
    assert flat.out_features == 16 * 5 * 5


def test_resnet18_stem_depends_on_image_size():
    small = build("resnet18", 3, 32, width="64")
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    large = build("resnet18", 1, 84, width="64")
    assert large.conv1.kernel_size == (7, 7) and large.conv1.in_channels == 1
    assert small.out_features == large.out_features == 512


def test_conv4_omniglot_is_mamls_network():
    model = build("conv4-omniglot", 1, 28, hidden="64")
    assert model.out_features == 64
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [m.stride for m in model.modules() if isinstance(m, nn.Conv2d)] == [(2, 2)] * 4
    # The same network through conv4's options.
    same = build("conv4", 1, 28, hidden="64", downsample="stride", pooled="true")
    assert same.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("resnet12", {"widths": "0,8"}, "widths"),
        ("resnet12", {"drop_rate": "1.5"}, "drop_rate"),
        ("wrn28", {"depth": "27"}, "6n\\+4"),
        ("conv4", {"hidden": "0"}, "positive"),
        ("conv4", {"finetune": "frozen"}, "no_freeze"),
        ("resnet18", {"unfreeze_epoch": "-1"}, "unfreeze_epoch"),
        ("resnet12", {"widht": "8"}, "Did you mean 'widths'"),
    ],
)
def test_bad_options_are_clear_errors(name, options, match):
    with pytest.raises(metareg.OptionError, match=match):
        build(name, 3, 32, **options)


# -- pretrained weights -----------------------------------------------------------


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrained_from_a_torch_file(tmp_path):
    torch.manual_seed(1)
    source = build("resnet12", 3, 32)
    source(torch.rand(4, 3, 32, 32))  # move BatchNorm statistics away from their initial values
    path = tmp_path / "r12.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build("resnet12", 3, 32, pretrained=str(path))
    assert _same_weights(source, loaded)
    assert loaded.pretrained_from == str(path) and loaded.pretrained_on == "unknown"
    assert build("resnet12", 3, 32).pretrained_on is None


def test_pretrained_from_safetensors_with_metadata(tmp_path):
    from safetensors.torch import save_file

    source = build("conv4", 3, 32)
    path = tmp_path / "conv4.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path),
              metadata={"pretrained_on": "ImageNet"})
    loaded = build("conv4", 3, 32, pretrained=str(path))
    assert _same_weights(source, loaded)
    assert loaded.pretrained_on == "imagenet"


def test_pretrained_name_from_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path))
    (tmp_path / "weights").mkdir()
    source = build("conv4", 1, 28)
    torch.save(source.state_dict(), tmp_path / "weights" / "my-conv4-imagenet.pth")
    loaded = build("conv4", 1, 28, pretrained="my-conv4-imagenet")  # suffix found by the lookup
    assert _same_weights(source, loaded)
    assert loaded.pretrained_on == "imagenet"  # guessed from the file name
    explicit = build("conv4", 1, 28, pretrained="my-conv4-imagenet.pth", pretrained_on="places365")
    assert explicit.pretrained_on == "places365"


def test_pretrained_from_a_lightning_checkpoint_with_prefix(tmp_path):
    source = build("conv4", 3, 32)
    state = {f"strategy.backbone.{k}": v for k, v in source.state_dict().items()}
    state["strategy.head.weight"] = torch.zeros(3)  # other modules of the checkpoint are ignored
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert _same_weights(source, build("conv4", 3, 32, pretrained=str(path)))


def test_torchvision_style_checkpoint_loads_into_resnet18_on_grayscale(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    model = build("resnet18", 1, 84, width="64", pretrained=str(path))
    assert model.pretrained_on == "imagenet"
    torch.testing.assert_close(model.conv1.weight, tv.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    # The 3x3 small-image stem cannot take ImageNet's 7x7 filters.
    with pytest.raises(metareg.OptionError, match="wrong shape.*conv1.weight"):
        build("resnet18", 3, 32, width="64", pretrained=str(path))


def test_missing_weights_name_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREG_CACHE_DIR", str(tmp_path))
    with pytest.raises(metareg.OptionError, match="never downloads") as err:
        build("conv4", 3, 32, pretrained="nothing-here")
    assert str(tmp_path / "weights") in str(err.value)
    with pytest.raises(metareg.OptionError, match="does not exist"):
        build("conv4", 3, 32, pretrained=str(tmp_path / "absent.pt"))


def test_mismatched_keys_are_listed(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build("resnet12", 3, 32).state_dict(), path)
    with pytest.raises(metareg.OptionError) as err:
        build("conv4", 3, 32, pretrained=str(path))
    text = str(err.value)
    assert "missing key(s): features.0.0.weight" in text
    assert "unexpected key(s): blocks.0.conv1.weight" in text
    assert "more)" in text  # long lists are cut short
    # Same keys, other widths: the shapes are named.
    wide = tmp_path / "wide.pt"
    torch.save(build("conv4", 3, 32, hidden="16").state_dict(), wide)
    with pytest.raises(metareg.OptionError, match=r"wrong shape.*\(file \(16, 3, 3, 3\), backbone \(8, 3, 3, 3\)\)"):
        build("conv4", 3, 32, pretrained=str(wide))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build("conv4", 3, 32), path)  # a whole module: needs unpickling code, refused
    with pytest.raises(metareg.OptionError, match="weights_only=True"):
        build("conv4", 3, 32, pretrained=str(path))


# -- fine-tuning schedules ----------------------------------------------------------


def _trainable(model: nn.Module) -> bool:
    flags = {p.requires_grad for p in model.parameters()}
    assert len(flags) == 1
    return flags.pop()


def _bn_training(model: nn.Module) -> set[bool]:
    return {m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)}


def test_freeze_unfreeze_schedule(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build("conv4", 3, 32).state_dict(), path)
    with pytest.warns(UserWarning, match="without pretrained"):
        build("conv4", 3, 32, finetune="freeze")
    model = build("conv4", 3, 32, pretrained=str(path), finetune="freeze_unfreeze", unfreeze_epoch="2")
    parent = nn.Sequential(model)  # the core trains the backbone inside a bigger module
    for epoch in range(4):
        model.metareg_epoch_start(epoch)
        parent.train()
        frozen = epoch < 2
        assert _trainable(model) is not frozen
        assert _bn_training(model) == {not frozen}
        before = copy.deepcopy(model.state_dict())
        model(torch.rand(4, 3, 32, 32))
        key = "features.0.1.running_mean"
        stats_moved = not torch.equal(before[key], model.state_dict()[key])
        assert stats_moved is not frozen  # frozen BatchNorm keeps the pretrained statistics
    parent.eval()
    assert _bn_training(model) == {False}
    # Resuming in the middle of the schedule lands in the right state.
    model.metareg_epoch_start(0)
    assert not _trainable(model)


def test_freeze_keeps_everything_fixed(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build("resnet12", 3, 32).state_dict(), path)
    model = build("resnet12", 3, 32, pretrained=str(path), finetune="freeze")
    for epoch in (0, 5, 50):
        model.metareg_epoch_start(epoch)
        model.train()
        assert not _trainable(model) and _bn_training(model) == {False}
    default = build("resnet12", 3, 32)
    default.metareg_epoch_start(0)
    assert _trainable(default) and _bn_training(default) == {True}


# -- the CLI ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet12", "resnet18", "wrn28", "conv4", "conv4-omniglot"])
def test_info_shows_options(name):
    from metareg.cli import cli

    result = CliRunner().invoke(cli, ["info", "backbones", name, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    options = {o["name"]: o for o in doc["options"]}
    assert {"pretrained", "finetune", "unfreeze_epoch"} <= set(options)
    assert "channels" not in options and "image_size" not in options
    assert all(o["help"] for o in options.values()), [n for n, o in options.items() if not o["help"]]
    assert options["finetune"]["type"] == "{no_freeze|freeze|freeze_unfreeze}"
    text = CliRunner().invoke(cli, ["info", "backbone", name]).output
    assert "--backbone-opt" in text and "pretrained" in text


def test_info_resnet12_widths():
    from metareg.cli import cli

    doc = json.loads(CliRunner().invoke(cli, ["info", "backbones", "resnet12", "--json"]).output)
    options = {o["name"]: o for o in doc["options"]}
    assert options["widths"]["default"] == [64, 160, 320, 640]
    assert options["drop_rate"]["type"] == "float"
