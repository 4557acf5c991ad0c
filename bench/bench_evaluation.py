"""Evaluation throughput: metareg's evaluation step against the backbone's forward alone, paired.

    python bench/bench_evaluation.py [--ways 20] [--shots 1] [--queries 15] [--tasks 25] [--pairs 10]
                                     [--device cpu|cuda] [--hidden 64] [--synthetic | --zip PATH]

Evaluation is near its bound when it costs little more than the Conv-4 forward over the same
images (issue 16: keep it within 1.2x of the forward, i.e. a ratio >= 0.83x). One turn of each:

- metareg: ``--tasks`` test episodes as evaluation builds them: indices from the sampler, one
  gather from the uint8 store, floats on the device, the strategy's ``forward`` in eval mode
  and the per-episode accuracy;
- forward: the backbone alone over the same number of images, already floats on the device.

Prototypical networks, an untrained conv4 (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import metareg
from metareg.episodes import EpisodeSampler, episode_labels, generator, split_episodes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

SHARED = Path(os.environ.get("METAREG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def data(a: argparse.Namespace):
    if a.synthetic:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (100 * 20, 1, 28, 28), dtype=torch.uint8, generator=g), \
            torch.arange(100).repeat_interleave(20)
    from metareg_datasets.omniglot import load_set

    loaded = load_set(a.zip, 28)
    return torch.from_numpy(loaded["images"]), torch.from_numpy(loaded["labels"]).long()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--tasks", type=int, default=25, help="episodes per evaluation step (eval_meta_batch_size)")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--zip", type=Path, default=SHARED / "data" / "omniglot" / "images_background.zip")
    ap.add_argument("--synthetic", action="store_true", help="random Omniglot-shaped images (no data needed)")
    a = ap.parse_args(argv)
    from metareg_backbones.conv import conv4
    from metareg_strategies.protonet import PrototypicalNetworks

    x_u8, y = data(a)
    classes = [f"c{i}" for i in range(int(y.max()) + 1)]
    torch.manual_seed(0)
    backbone = conv4(channels=1, image_size=28, hidden=a.hidden)
    strategy = PrototypicalNetworks()
    strategy.setup(backbone, metareg.TaskInfo(a.ways, a.shots, a.queries, a.ways, a.shots, a.queries, len(classes),
                                              1, 28, backbone.out_features))
    strategy.to(a.device).eval()
    if strategy.channels_last:  # as a run does when --channels-last is unset
        strategy.to(memory_format=torch.channels_last)
    store = metareg.TensorImages(x_u8)
    sampler = EpisodeSampler(y, classes, ways=a.ways, shots=a.shots, queries=a.queries, split="test")
    gen = generator("bench-eval", 0)
    support_labels = episode_labels(a.tasks, a.ways, a.shots, a.device)
    query_labels = episode_labels(a.tasks, a.ways, a.queries, a.device)
    images_per_step = a.tasks * a.ways * (a.shots + a.queries)
    floats = torch.rand(images_per_step, 1, 28, 28, device=a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    @torch.no_grad()
    def evaluation_step():
        images = store.gather(sampler.sample(a.tasks, gen)).to(a.device).float().div_(255)
        support, query = split_episodes(images, a.shots)
        logits = strategy(metareg.EpisodeBatch(support, support_labels, query, query_labels, a.ways))
        return (logits.argmax(-1) == query_labels).float().mean(1).cpu()

    @torch.no_grad()
    def forward_alone():
        return strategy.backbone(floats)

    print(f"# bench_evaluation: prototypicalnetworks, conv4 (hidden {a.hidden}), {a.ways}-way {a.shots}-shot "
          f"{a.queries}-query, {a.tasks} episodes per step ({images_per_step} images), device {a.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    r = paired(Side("metareg", evaluation_step, a.tasks), Side("forward", forward_alone, a.tasks),
               pairs=a.pairs, sync=sync)
    verdict = "meets" if r.ratio >= 1 / 1.2 else "MISSES"
    print(r.summary("Evaluation episodes/s", "episodes/s") + f"  (target >= 0.83x, within 1.2x of the forward: "
          f"{verdict})", flush=True)


if __name__ == "__main__":
    main()
