"""Evaluation throughput: metareg's evaluation step against the backbone's forward alone, paired.

    python bench/bench_evaluation.py [--ways 20] [--shots 1] [--queries 15] [--tasks 25] [--pairs 10]
                                     [--device cpu|cuda] [--hidden 64] [--synthetic | --zip PATH]
                                     [--end-to-end [--eval-meta-batch-size 25]]

Evaluation is near its bound when it costs little more than the Conv-4 forward over the same
images (issue 16: keep it within 1.2x of the forward, i.e. a ratio >= 0.83x). One turn of each:

- metareg: ``--tasks`` test episodes as evaluation builds them: indices from the sampler, one
  gather from the uint8 store, floats on the device, the strategy's ``forward`` in eval mode
  and the per-episode accuracy;
- forward: the backbone alone over the same number of images, already floats on the device.

With ``--end-to-end`` the metareg side is ``metareg eval`` itself (``metareg.evaluate``, what the
command runs): reading the checkpoint, building the data and a Lightning trainer, ``--tasks``
fixed seeded test episodes in batches of ``--eval-meta-batch-size``, the report and the run
directory's files; the forward side runs the backbone over the same number of images in the
same batches. This is issue 16's figure (``metareg eval`` 52.7 s against the forward's 44 s for
400 Omniglot 20-way 1-shot 15-query episodes on an idle CPU: 0.84x), as a paired line:

    Evaluation end to end episodes/s: metareg eval / forward = 0.85x [95% CI ...] (...)  (target >= 0.83x ...)

Its data is glyphs (or Omniglot's background set with ``--zip``, ``split=lake``: the test alphabets).

Prototypical networks, an untrained conv4 (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
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
    ap.add_argument("--end-to-end", action="store_true", help="time `metareg eval` (metareg.evaluate) whole")
    ap.add_argument("--eval-meta-batch-size", type=int, default=25, help="episodes per forward (--end-to-end)")
    a = ap.parse_args(argv)
    if a.end_to_end:
        end_to_end(a)
        return
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


def end_to_end(a: argparse.Namespace) -> None:
    """``metareg eval`` of ``--tasks`` episodes against the forward alone over as many images, paired."""
    from bench_predict import make_checkpoint

    data = {"dataset": "glyphs"} if a.synthetic or not a.zip.is_file() else \
        {"dataset": "omniglot", "dataset_options": {"root": str(a.zip), "split": "lake"}}
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    accelerator = "gpu" if a.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        ckpt = make_checkpoint(Path(tmp) / "model.ckpt", "prototypicalnetworks", 1, 28, a.hidden, a.ways, a.shots)
        runs = itertools.count()

        def evaluate():
            return metareg.evaluate(ckpt, test_ways=a.ways, test_shots=a.shots, test_queries=a.queries,
                                    test_num_tasks=a.tasks, eval_meta_batch_size=a.eval_meta_batch_size,
                                    accelerator=accelerator, progress=False,
                                    output_dir=Path(tmp) / f"eval{next(runs)}", **data)

        from metareg_backbones.conv import conv4

        # the checkpoint's network (untrained weights: speed does not depend on them), in the layout a run uses
        backbone = conv4(channels=1, image_size=28, hidden=a.hidden).to(a.device, memory_format=torch.channels_last)
        backbone.eval()
        per_episode = a.ways * (a.shots + a.queries)
        batches = [min(a.eval_meta_batch_size, a.tasks - i) * per_episode
                   for i in range(0, a.tasks, a.eval_meta_batch_size)]
        floats = torch.rand(batches[0], 1, 28, 28, device=a.device).contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def forward_alone():
            for n in batches:
                backbone(floats[:n])

        print(f"# bench_evaluation --end-to-end: metareg eval of {a.tasks} {a.ways}-way {a.shots}-shot "
              f"{a.queries}-query episodes on {data['dataset']} ({a.tasks * per_episode} images, "
              f"{a.eval_meta_batch_size} episodes per forward), conv4 (hidden {a.hidden}), device {a.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        r = paired(Side("metareg eval", evaluate, a.tasks), Side("forward", forward_alone, a.tasks),
                   pairs=a.pairs, sync=sync, balance=False)
    verdict = "meets" if r.ratio >= 1 / 1.2 else "MISSES"
    print(r.summary("Evaluation end to end episodes/s", "episodes/s") + f"  (target >= 0.83x, within 1.2x of the "
          f"forward: {verdict})", flush=True)


if __name__ == "__main__":
    main()
