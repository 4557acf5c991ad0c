"""Two-process DDP on CPU (ddp_spawn): disjoint training episodes, per-episode test results gathered."""
from __future__ import annotations

import csv
import json

from click.testing import CliRunner

from metareg.cli import cli

from .test_run import DATA, TINY


def episodes(path):
    with open(path, newline="") as f:
        return {int(r["episode"]): float(r["accuracy"]) for r in csv.DictReader(f)}


def test_two_process_ddp_spawn_run_gathers_every_test_episode(tmp_path):
    out = tmp_path / "ddp"
    # 13 test episodes in batches of 6: the ranks hold 6+1 and 6 episodes, so padding must be dropped.
    result = CliRunner().invoke(cli, ["run", *TINY, "--devices", "2", "--accelerator", "cpu",
                                      "--trainer-strategy", "ddp_spawn", "--test-num-tasks", "13",
                                      "--output-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(95% CI, 13 test episodes)" in result.output
    per_episode = episodes(out / "test_episodes.csv")
    assert sorted(per_episode) == list(range(13))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 13
    # each of the 2 processes ran epoch_length / 2 = 2 steps per epoch: 4 steps (0..3) in 2 epochs, not 8
    ckpt_rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["train_loss"]]
    assert max(int(r["step"]) for r in ckpt_rows) <= 3
    # The gathered per-episode values are exactly what one process measures on the same checkpoint.
    single = CliRunner().invoke(cli, ["eval", str(out / summary["best_checkpoint"]), *DATA, "--test-num-tasks", "13",
                                      "--output-dir", str(tmp_path / "single"), "--no-progress"])
    assert single.exit_code == 0, single.output
    assert episodes(tmp_path / "single" / "test_episodes.csv") == per_episode


def test_training_episodes_are_split_across_ranks_without_collisions():
    """What Lightning's distributed sampler hands each rank: disjoint meta-batches, equal counts, and
    batch i is the same episodes whichever process draws it."""
    import torch
    from torch.utils.data import DistributedSampler

    import metareg
    from metareg.config import RunConfig
    from metareg.datamodule import EpisodeDataModule

    labels = torch.arange(20).repeat_interleave(6)
    # every image is filled with its own index, so a gathered batch says which samples it holds
    images = torch.arange(120, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    data = metareg.FewShotDataset.from_arrays(images, labels, name="t", ratios=(0.6, 0.2, 0.2))
    config = RunConfig.from_sources({"ways": 3, "shots": 1, "queries": 2, "test_queries": 2, "meta_batch_size": 4,
                                     "epoch_length": 8})
    dm = EpisodeDataModule(data, config)
    dm.check()
    dm.setup("fit")
    per_rank = [list(DistributedSampler(dm.train_set, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert [len(items) for items in per_rank] == [4, 4]  # epoch_length / world size each
    assert sorted(per_rank[0] + per_rank[1]) == list(range(8))  # every meta-batch once, on one rank

    def samples(i):
        return dm.train_set[i].images[..., 0, 0, 0]  # (meta_batch, ways, shots + queries) sample ids

    batches = {i: samples(i) for i in range(8)}
    assert all(torch.equal(batches[i], samples(i)) for i in range(8))  # reproducible in any process
    rank0 = {tuple(b.flatten().tolist()) for i, b in batches.items() if i in per_rank[0]}
    rank1 = {tuple(b.flatten().tolist()) for i, b in batches.items() if i in per_rank[1]}
    assert len(rank0) == len(rank1) == 4 and not rank0 & rank1  # no rank repeats another's episodes
    dm.train_set.epoch = 1
    assert not torch.equal(samples(0), batches[0])  # a new epoch draws new episodes


def test_unfreezing_under_ddp_keeps_the_processes_in_step(tmp_path):
    """DDP only all-reduces what was trainable when it wrapped the model; a backbone unfrozen at
    epoch 1 must still get synchronised gradients (the learner checks that all processes end with
    the same weights, and fails the run if not)."""
    import torch
    from metareg_backbones.conv import conv4

    weights = tmp_path / "conv4.pt"
    torch.save(conv4(channels=1, image_size=14, hidden=8).state_dict(), weights)
    frozen = ["--backbone-opt", f"pretrained={weights}", "--backbone-opt", "finetune=freeze_unfreeze",
              "--backbone-opt", "unfreeze_epoch=1"]
    ddp = ["--devices", "2", "--accelerator", "cpu", "--trainer-strategy", "ddp_spawn"]
    out = tmp_path / "maml"
    result = CliRunner().invoke(cli, ["run", *TINY, *frozen, *ddp, "--strategy", "maml", "--max-epochs", "3",
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "3-way 1-shot" in result.output

    # A parameter-free strategy on a frozen backbone leaves DDP nothing to wrap: a clear error first.
    out = tmp_path / "protonet"
    result = CliRunner().invoke(cli, ["run", *TINY, *frozen, *ddp, "--output-dir", str(out)])
    assert result.exit_code != 0
    assert "nothing is trainable when training starts" in result.output
    assert "--devices 1" in result.output
    assert not out.exists()
