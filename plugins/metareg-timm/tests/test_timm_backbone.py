"""The `timm` backbone through the CLI: a run, weights round trips (a file, the Hugging Face cache), refusals.

The combination matrix (tests/test_combinations.py) covers it with every strategy and transform through
its record's test_options (resnet10t). Nothing here downloads anything: weights are made in the test.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from metareg.cli import cli

# Grey glyphs at 14 px, a budget of two steps: the point is the backbone, not the learning.
TINY = ["--backbone", "timm", "--dataset-opt", "image_size=14", "--dataset-opt", "samples_per_class=6",
        "--ways", "3", "--shots", "1", "--queries", "2", "--test-queries", "2", "--meta-batch-size", "1",
        "--epoch-length", "2", "--max-epochs", "1", "--test-num-tasks", "3", "--val-num-tasks", "2", "--no-progress"]
MODEL = ["--backbone-opt", "model=resnet10t"]


def run(*args):
    return CliRunner().invoke(cli, ["run", *TINY, *args])


def published_resnet10t() -> dict[str, torch.Tensor]:
    """What a published resnet10t file holds: RGB input filters and the 1000-class `fc` head."""
    torch.manual_seed(1)
    net = timm.create_model("resnet10t", num_classes=1000)
    for m in net.modules():  # non-trivial running statistics, so that keeping them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return {k: v.clone() for k, v in net.state_dict().items()}


def backbone_weights(run_dir) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    prefix = "strategy.backbone.net."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}, ckpt["metareg"]


def assert_loaded(weights: dict[str, torch.Tensor], published: dict[str, torch.Tensor]) -> None:
    assert not [k for k in weights if k.startswith("fc.")]  # a feature extractor: no classifier
    # Grey images: the RGB input filters are summed into one channel.
    assert torch.equal(weights["conv1.0.weight"], published["conv1.0.weight"].sum(1, keepdim=True))
    rest = [k for k in weights if k != "conv1.0.weight" and not k.endswith("num_batches_tracked")]
    assert rest and all(torch.equal(weights[k], published[k]) for k in rest)  # frozen: nothing moved


def test_weights_from_a_file_round_trip_frozen(tmp_path):
    published = published_resnet10t()
    path = tmp_path / "resnet10t-weights.pth"
    torch.save(published, path)
    out = tmp_path / "run"
    result = run(*MODEL, "--backbone-opt", f"pretrained={path}", "--backbone-opt", "pretrained_on=ImageNet",
                 "--backbone-opt", "finetune=freeze", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "prototypicalnetworks + timm on glyphs" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "timm" and summary["options"]["backbone"]["model"] == "resnet10t"
    weights, meta = backbone_weights(out)
    assert_loaded(weights, published)
    assert meta["backbone"]["pretrained_on"] == "imagenet"  # recorded in the checkpoint


def _hub_cache(root, repo: str, state: dict[str, torch.Tensor]) -> None:
    """The Hugging Face cache layout that timm's download leaves: refs/main names a snapshot folder."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / ("0" * 40) / "model.safetensors"))


def test_timms_own_weights_come_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = ["--backbone-opt", "model=resnet10t.c3_in1k", "--backbone-opt", "pretrained=timm",
             "--backbone-opt", "finetune=freeze"]
    # Not cached yet: one line that says where it looked and how to fetch, before anything is written.
    out = tmp_path / "run"
    result = run(*model, "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: timm: the weights of 'resnet10t.c3_in1k' are not in the local cache")
    assert str(tmp_path / "hub") in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()

    published = published_resnet10t()
    _hub_cache(tmp_path / "hub", "timm/resnet10t.c3_in1k", published)
    result = run(*model, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    weights, meta = backbone_weights(out)
    assert_loaded(weights, published)
    assert meta["backbone"]["pretrained_on"] == "imagenet"  # from the weights' tag, c3_in1k


@pytest.mark.parametrize("content", [b"these are not weights" * 10, b""], ids=["garbage", "empty"])
def test_a_corrupt_weights_file_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    out = tmp_path / "run"
    result = run(*MODEL, "--backbone-opt", f"pretrained={path}", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: timm: cannot load {path} with torch.load(weights_only=True)")
    assert not out.exists()


def test_weights_of_another_model_are_refused_naming_the_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(path))
    result = run(*MODEL, "--backbone-opt", f"pretrained={path}", "--output-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert "timm: the weights in" in result.output and "missing key(s)" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("model, needles", [
    ("resnet10tt", ("model 'resnet10tt' is not a timm model", "did you mean resnet10t")),
    ("vit_tiny_patch16_22", ("is not a timm model", "vit_tiny_patch16_224")),
    ("resnet10t.tv_in1k", ("timm has no weights tagged 'tv_in1k' for resnet10t", "c3_in1k")),
])
def test_a_model_timm_does_not_have_is_refused_with_close_names(tmp_path, model, needles):
    out = tmp_path / "run"
    result = run("--backbone-opt", f"model={model}", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: timm: ")
    assert all(n in result.output for n in needles), result.output
    assert not out.exists()


def test_a_vit_is_built_for_the_image_size_and_takes_weights_trained_at_another():
    """ViTs have a fixed input size: built at the dataset's 32 px, with 224 px weights' position embeddings
    resampled by timm's own checkpoint filter."""
    from metareg_timm.backbone import timm_backbone

    net = timm_backbone(channels=3, image_size=32, model="vit_tiny_patch16_224")
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, net.out_features) == (2, 192)
    assert net.net.pos_embed.shape[1] == 1 + (32 // 16) ** 2


def test_vit_weights_at_another_size_load(tmp_path):
    from metareg_timm.backbone import timm_backbone

    big = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(path))
    net = timm_backbone(channels=3, image_size=32, model="vit_tiny_patch16_224", pretrained=str(path))
    assert torch.equal(net.net.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)
    assert net.net.pos_embed.shape == (1, 5, 192) and net.pretrained_on == "unknown"
