"""ProtoNet's episodes_per_forward: the backbone runs over the meta-batch in chunks of episodes."""
from __future__ import annotations

import pytest
import torch
from metareg_backbones.conv import conv4
from metareg_strategies.protonet import PrototypicalNetworks

import metareg
from metareg.episodes import episode_labels


def strategy(per_forward: int) -> PrototypicalNetworks:
    torch.manual_seed(0)
    backbone = conv4(channels=1, image_size=8, hidden=4)
    s = PrototypicalNetworks(episodes_per_forward=per_forward)
    s.setup(backbone, metareg.TaskInfo(3, 2, 2, 3, 2, 2, 10, 1, 8, backbone.out_features))
    return s


def episodes(count: int) -> metareg.EpisodeBatch:
    g = torch.Generator().manual_seed(1)
    return metareg.EpisodeBatch(torch.rand(count, 6, 1, 8, 8, generator=g), episode_labels(count, 3, 2),
                                torch.rand(count, 6, 1, 8, 8, generator=g), episode_labels(count, 3, 2), 3)


def test_chunks_change_nothing_in_evaluation():
    batch = episodes(5)
    whole, chunked = strategy(5).eval(), strategy(2).eval()
    assert torch.allclose(whole(batch), chunked(batch), atol=1e-5)


def test_one_episode_per_pass_trains_with_each_episodes_own_batch_statistics():
    batch = episodes(3)
    alone = [strategy(0).train()(metareg.EpisodeBatch(batch.support[i:i + 1], batch.support_labels[i:i + 1],
                                                      batch.query[i:i + 1], batch.query_labels[i:i + 1], 3))
             for i in range(3)]
    per_episode = strategy(1).train()(batch)
    assert torch.allclose(per_episode, torch.cat(alone), atol=1e-5)
    # one pass over all three normalises with their pooled statistics: different logits
    assert not torch.allclose(strategy(3).train()(batch), per_episode, atol=1e-3)


def test_automatic_choice_fits_the_cpu_image_budget():
    s = strategy(0)
    images = torch.zeros(32, 100, 1, 8, 8)
    assert s.chunk(images) == PrototypicalNetworks.CPU_IMAGES_PER_FORWARD // 100
    assert s.chunk(torch.zeros(32, 10_000, 1, 8, 8)) == 1  # never less than one episode
    assert strategy(7).chunk(images) == 7


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_episodes_per_forward_is_refused(bad):
    with pytest.raises(metareg.OptionError, match="episodes_per_forward"):
        PrototypicalNetworks(episodes_per_forward=bad)
