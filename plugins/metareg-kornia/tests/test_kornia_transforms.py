"""Contract tests over every registered transform, plus the first-party Kornia chains and compose-from-config."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

import metareg
from metareg.options import bind, parse_assignments
from metareg.plugins import load_plugins
from metareg.registry import Registry


def _registry() -> Registry:
    return Registry(load_plugins())


# First-party transforms; tests/test_contracts.py runs the generic contract over every installed plugin's.
TRANSFORMS = [p.record.name for p in _registry().components("transforms") if p.plugin.distribution == "metareg-kornia"]
# Options that make each chain do something visible on every call (p=1) in the tests.
ALWAYS = {"flash": {"p": "1"}, "omniglot": {"p": "1"}, "compose": {"augmentations": '["RandomHorizontalFlip"]'}}


def build(name: str, channels: int, image_size: int, **options):
    factory = _registry().get("transforms", f"kornia:{name}").record.load()
    kwargs = bind(factory, options, component=name, injected={"channels": channels, "image_size": image_size})
    return factory(**kwargs)


def test_first_party_transforms_are_registered():
    assert {"flash", "lee2019", "omniglot", "compose"} <= set(TRANSFORMS)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_transform_keeps_shape_device_dtype(name, channels, size):
    transform = build(name, channels, size, **ALWAYS.get(name, {}))
    assert isinstance(transform, metareg.Transform)
    x = torch.rand(6, channels, size, size)
    train = transform.train()(x)
    assert isinstance(train, torch.Tensor)
    assert train.shape[:2] == x.shape[:2] and train.device == x.device and train.dtype == x.dtype
    assert torch.isfinite(train).all()
    evaluated = transform.eval().evaluate(x)
    assert evaluated.shape == train.shape and evaluated.dtype == x.dtype and torch.isfinite(evaluated).all()
    # The same shape on every call, and the input is left alone.
    before = x.clone()
    assert transform.train()(x).shape == train.shape
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_seeded_batches_repeat(name):
    transform = build(name, 3, 32, **ALWAYS.get(name, {}))
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(123)
    a = transform(x)
    torch.manual_seed(123)
    torch.testing.assert_close(transform(x), a, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["flash", "lee2019", "omniglot", "compose"])
def test_seeded_batches_repeat_and_other_seeds_differ(name):
    transform = build(name, 3, 32, **ALWAYS.get(name, {}))
    x = torch.rand(8, 3, 32, 32)
    torch.manual_seed(123)
    a = transform(x)
    torch.manual_seed(123)
    b = transform(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(124)
    c = transform(x)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_dtypes_are_kept(dtype):
    transform = build("flash", 3, 32, p="1")
    out = transform(torch.rand(4, 3, 32, 32).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_flash_chain_is_flashs_example():
    import kornia.augmentation as K

    transform = build("flash", 3, 84, size="96")
    kinds = [type(m) for m in transform.augment]
    assert kinds == [
        K.RandomHorizontalFlip, K.RandomRotation, K.RandomAffine, K.RandomPerspective,
        K.ColorJitter, K.ColorJitter, K.ColorJitter, K.ColorJitter,
        K.RandomMotionBlur, K.RandomErasing,
    ]
    assert all(m.p == 0.25 for m in transform.augment)
    x = torch.rand(3, 3, 84, 84)
    assert transform(x).shape == (3, 3, 96, 96)
    assert transform.evaluate(x).shape == (3, 3, 96, 96)  # evaluation resizes too
    # Grayscale: saturation and hue are skipped, brightness and contrast kept.
    gray = build("flash", 1, 28)
    assert sum(isinstance(m, K.ColorJitter) for m in gray.augment) == 2
    # p=0: nothing changes.
    assert torch.equal(build("flash", 3, 32, p="0")(x[..., :32, :32]), x[..., :32, :32])


def test_lee2019_normalises_in_training_and_evaluation():
    transform = build("lee2019", 3, 84)
    x = torch.full((4, 3, 84, 84), 0.5)
    mean = torch.tensor([120.39586422, 115.59361427, 104.54012653]) / 255
    std = torch.tensor([70.68188272, 68.27635443, 72.54505529]) / 255
    expected = ((0.5 - mean) / std).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(transform.evaluate(x), expected)
    out = transform(torch.rand(4, 3, 84, 84))
    assert out.shape == (4, 3, 84, 84) and out.min() < 0  # normalised, not in [0, 1] any more
    # Options: one value for all channels; no normalisation; crop choices.
    one = build("lee2019", 1, 28, mean="0.5", std="0.25")
    torch.testing.assert_close(one.evaluate(torch.full((1, 1, 28, 28), 0.75)), torch.ones(1, 1, 28, 28))
    plain = build("lee2019", 3, 32, normalize="false", crop="resized", flip_p="0", jitter="0")
    y = torch.rand(2, 3, 32, 32)
    assert torch.equal(plain.evaluate(y), y)
    assert plain(y).shape == y.shape and 0 <= plain(y).min() and plain(y).max() <= 1


def test_transforms_follow_the_module_to_another_dtype_and_keep_buffers():
    transform = build("lee2019", 3, 32)
    names = {n for n, _ in transform.named_buffers()}
    assert {"normalize.mean", "normalize.std"} <= names  # moved with .to(device)


def test_omniglot_jitter_is_small():
    transform = build("omniglot", 1, 28, p="1", degrees="5", translate="0.05", scale="0.05")
    glyph = torch.ones(16, 1, 28, 28)
    glyph[:, :, 10:18, 12:16] = 0.0  # a dark stroke on white paper
    out = transform(glyph)
    assert not torch.equal(out, glyph)
    # Border padding keeps the paper white; only the stroke moves a little.
    assert out[:, :, 0, :].min() > 0.99 and out[:, :, :, 0].min() > 0.99
    assert (out.mean() - glyph.mean()).abs() < 0.02


# -- compose --------------------------------------------------------------------


def test_compose_from_json_text_as_typed_on_the_cli():
    given = parse_assignments(['augmentations=[{"RandomHorizontalFlip": {"p": 1.0}}, "RandomVerticalFlip"]'], "t")
    transform = build("compose", 3, 32, **given)
    import kornia.augmentation as K

    flip_h, flip_v = transform.augment
    assert isinstance(flip_h, K.RandomHorizontalFlip) and flip_h.p == 1.0
    assert isinstance(flip_v, K.RandomVerticalFlip) and flip_v.p == 0.5
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    out = transform(x)
    # Every image is mirrored left-right (p=1), then maybe upside down.
    for i in range(2):
        assert torch.equal(out[i], x[i].flip(-1)) or torch.equal(out[i], x[i].flip(-1).flip(-2))


def test_compose_from_yaml_text_and_a_yaml_config_list():
    text = "[RandomVerticalFlip, {RandomAffine: {degrees: 10, translate: [0.1, 0.1]}}]"
    from_text = build("compose", 1, 28, augmentations=text)
    config = yaml.safe_load("transform_opts:\n  augmentations:\n    - RandomVerticalFlip\n"
                            "    - RandomAffine: {degrees: 10, translate: [0.1, 0.1]}\n")
    from_list = build("compose", 1, 28, **config["transform_opts"])
    assert [type(m) for m in from_text.augment] == [type(m) for m in from_list.augment]
    assert tuple(from_list.augment[1]._param_generator.translate) == pytest.approx((0.1, 0.1))  # list -> tuple
    # A single bare name works too.
    assert len(build("compose", 1, 28, augmentations="RandomInvert").augment) == 1


def test_compose_with_a_size_changing_crop_evaluates_at_the_same_size():
    transform = build("compose", 3, 32, augmentations='[{"RandomCrop": {"size": [24, 24]}}]',
                      mean="0.5", std="0.5")
    x = torch.rand(2, 3, 32, 32)
    assert transform(x).shape == transform.evaluate(x).shape == (2, 3, 24, 24)
    assert transform.evaluate(torch.full((1, 3, 32, 32), 0.5)).abs().max() < 1e-6  # normalised


def test_compose_does_not_shift_the_seeded_stream():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build("compose", 3, 32, augmentations='[{"RandomAffine": {"degrees": 5}}]')
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "augmentations, match",
    [
        ('["RandomFlip"]', "'RandomFlip' is not a kornia.augmentation.*Did you mean 'RandomVerticalFlip'"),
        ('["randomhorizontalflip", "RandomHorizontalFlipp"]', "#2 'RandomHorizontalFlipp'.*'RandomHorizontalFlip'"),
        ('[{"RandomAffine": {"degres": 10}}]', "RandomAffine has no argument 'degres'. Did you mean 'degrees'"),
        ('[{"RandomAffine": {"degrees": "ten"}}]', r"RandomAffine\(degrees='ten'\) was refused"),
        ('[{"RandomAffine": 10}]', "arguments must be a mapping"),
        ("[{RandomAffine: {degrees: 10}}", "neither JSON nor YAML"),
        ("[3]", "must be a class name or a one-key mapping"),
        ('["ColorJitter", {"RandomSaturation": {"saturation": [0.5, 1.5], "p": 1.0}}]', "fails on 1-channel"),
        ('{"a": 1, "b": 2}', "must be a class name or a one-key mapping"),
    ],
)
def test_compose_errors_name_the_problem(augmentations, match):
    with pytest.raises(metareg.OptionError, match=match):
        build("compose", 1, 28, augmentations=augmentations)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("flash", {"p": "1.5"}, "probability"),
        ("flash", {"size": "0"}, "size"),
        ("lee2019", {"crop": "center"}, "padded, resized, none"),
        ("lee2019", {"mean": "0.1,0.2"}, "one value per channel"),
        ("lee2019", {"scale": "0.5,0.2"}, "low <= high"),
        ("omniglot", {"translate": "2"}, "translate"),
        ("omniglot", {"padding_mode": "wrap"}, "zeros, border, reflection"),
        ("compose", {"mean": "0.5"}, "both mean and std"),
        ("flash", {"probability": "0.5"}, "unknown option 'probability'"),
    ],
)
def test_bad_options_are_clear_errors(name, options, match):
    with pytest.raises(metareg.OptionError, match=match):
        build(name, 3, 32, **options)


@pytest.mark.parametrize("name", ["flash", "lee2019", "omniglot", "compose"])
def test_info_shows_options(name):
    from metareg.cli import cli

    result = CliRunner().invoke(cli, ["info", "transforms", name, "--json"])
    assert result.exit_code == 0, result.output
    options = {o["name"]: o for o in json.loads(result.output)["options"]}
    assert options and all(o["help"] for o in options.values())
    assert "channels" not in options
    text = CliRunner().invoke(cli, ["info", "transform", name]).output
    assert "--transform-opt" in text
