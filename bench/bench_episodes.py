"""Episode sampling speed: metareg's EpisodeSampler vs learn2learn's Taskset, same data, same run.

Data: the real Omniglot background set (964 characters x 20 drawings, 28x28), the
same images as ``shared/bench/learn2learn_reference.py`` uses (float32 in [0, 1]).
Episodes: 5-way, 5 shots + 15 queries (20 samples per class).

Measured:
  indexing      building the per-class index tables (metareg: EpisodeSampler(...);
                learn2learn: MetaDataset + Taskset with its transforms)
  one-at-a-time episodes/s drawing one episode and gathering its images, split into
                support/query with class-major labels
  batched       metareg only: 32 episodes per draw (one index tensor, one gather)

learn2learn's loop is the one in the reference script: Taskset.sample() with
NWays / KShots / LoadData / RemapLabels / ConsecutiveLabels, then the support/query
split. When learn2learn is not importable only metareg's figures are printed, with the
ratio against the figure recorded in shared/bench/README.md (clearly marked).

Both libraries are timed paired and interleaved in one process (bench/paired.py): the
lines give the median of per-pair ratios with a bootstrap 95 % interval, rates beside them.

Usage: python bench/bench_episodes.py [--zip PATH | --synthetic] [--pairs 30] [--tasks 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import metareg
from metareg.episodes import EpisodeSampler, episode_labels, generator, split_episodes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
def synthetic(classes: int = 100, per_class: int = 20):
    """Random uint8 images shaped like Omniglot's, for dry runs without the data."""
    g = torch.Generator().manual_seed(0)
    x_u8 = torch.randint(0, 256, (classes * per_class, 1, 28, 28), dtype=torch.uint8, generator=g)
    return x_u8, torch.arange(classes).repeat_interleave(per_class), [f"c{i}" for i in range(classes)], 0.0


def load_omniglot(path: Path):
    from metareg_datasets.omniglot import load_set

    t0 = time.perf_counter()
    a = load_set(path, 28)
    seconds = time.perf_counter() - t0
    x_u8 = torch.from_numpy(a["images"])
    y = torch.from_numpy(a["labels"]).long()
    return x_u8, y, [str(c) for c in a["classes"]], seconds


def metareg_steps(x, x_u8, y, classes, ways, shots, queries, tasks):
    """Indexing time and the step functions to time (name -> (step, episodes per step))."""
    t0 = time.perf_counter()
    sampler = EpisodeSampler(y, classes, ways=ways, shots=shots, queries=queries, split="train")
    index_s = time.perf_counter() - t0
    gen = generator("bench", 0)
    store_u8 = metareg.TensorImages(x_u8)  # what a ClassSplit holds

    class store_f:  # the same gather over the float32 copy learn2learn is given
        @staticmethod
        def gather(idx):
            return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])

    ys1, yq1 = episode_labels(1, ways, shots), episode_labels(1, ways, queries)

    # positions of the support and the query samples in a flattened (ways, n) episode
    grid = torch.arange(ways * (shots + queries)).view(ways, shots + queries)
    order = torch.cat([grid[:, :shots].reshape(-1), grid[:, shots:].reshape(-1)])
    n_support = ways * shots

    def draw(store, count):
        # reorder the index tensor, not the images: one gather, and support / query are views of it
        idx = sampler.sample(count, gen).view(count, -1).index_select(1, order)
        images = store.gather(idx)
        return images, images[:, :n_support], images[:, n_support:]

    def one():
        _, support, query = draw(store_f, 1)
        return support, ys1, query, yq1

    def one_u8():  # the core's storage: uint8, converted to float after the gather
        images, _, _ = draw(store_u8, 1)
        images = images.float().mul_(1 / 255)
        return images[:, :n_support], ys1, images[:, n_support:], yq1

    def one_gather_then_split():  # gather the (1, ways, n) block, then split the images
        idx = sampler.sample(1, gen)
        support, query = split_episodes(store_f.gather(idx), shots)
        return support, ys1, query, yq1

    ysb, yqb = episode_labels(tasks, ways, shots), episode_labels(tasks, ways, queries)

    def batch():
        _, support, query = draw(store_f, tasks)
        return support, ysb, query, yqb

    s, _, q, _ = batch()
    assert s.shape == (tasks, ways * shots, 1, 28, 28) and q.shape == (tasks, ways * queries, 1, 28, 28)
    steps = {"eps_one": (one, 1), "eps_one_uint8": (one_u8, 1), "eps_one_split_after": (one_gather_then_split, 1),
             "eps_batched": (batch, tasks)}
    return index_s, steps


def l2l_step(x, y, ways, shots, queries):
    import learn2learn as l2l

    n = shots + queries
    t0 = time.perf_counter()
    ds = l2l.data.MetaDataset(torch.utils.data.TensorDataset(x, y))
    tf = [
        l2l.data.transforms.NWays(ds, ways),
        l2l.data.transforms.KShots(ds, n),
        l2l.data.transforms.LoadData(ds),
        l2l.data.transforms.RemapLabels(ds),
        l2l.data.transforms.ConsecutiveLabels(ds),
    ]
    ts = l2l.data.Taskset(ds, task_transforms=tf, num_tasks=-1)
    index_s = time.perf_counter() - t0

    def one():
        data, labels = ts.sample()
        idx = torch.arange(data.shape[0]).view(ways, n)
        s, q = idx[:, :shots].reshape(-1), idx[:, shots:].reshape(-1)
        return data[s], labels[s], data[q], labels[q]

    return getattr(l2l, "__version__", "?"), index_s, one


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zip", type=Path, default=SHARED / "data" / "omniglot" / "images_background.zip")
    ap.add_argument("--synthetic", action="store_true", help="random Omniglot-shaped images (no data needed)")
    ap.add_argument("--pairs", type=int, default=30, help="timed pairs per comparison")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both libraries (episode tensors are tiny: extra threads only "
                         "add synchronisation, badly so on a busy machine)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.synthetic and not a.zip.is_file():
        raise SystemExit(f"Omniglot background zip not found at {a.zip} (pass --zip, set METAREG_SHARED "
                         "or use --synthetic)")
    torch.manual_seed(0)
    x_u8, y, classes, load_s = synthetic() if a.synthetic else load_omniglot(a.zip)
    x = x_u8.float().div(255)  # what the reference script feeds both loops
    cfg = f"{a.ways}-way {a.shots}-shot {a.queries}-query"
    print(f"# bench_episodes: {'synthetic' if a.synthetic else 'Omniglot background'}: {len(y)} images, "
          f"{len(classes)} classes, 28x28 (loaded in {load_s:.2f} s); {cfg}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    m_index, steps = metareg_steps(x, x_u8, y, classes, a.ways, a.shots, a.queries, a.tasks)
    try:
        version, l_index, l_one = l2l_step(x, y, a.ways, a.shots, a.queries)
    except ImportError as exc:
        print(f"Sampling episodes/s: no ratio (learn2learn is not importable: {exc})")
        return
    print(f"# indexing: metareg {m_index:.4f} s, learn2learn {version} {l_index:.3f} s "
          f"({l_index / m_index:.0f}x faster)")
    rows = [("eps_one", "Sampling episodes/s"), ("eps_one_uint8", "Sampling episodes/s, uint8 store + float"),
            ("eps_one_split_after", "Sampling episodes/s, gather then split"),
            ("eps_batched", f"Sampling episodes/s, {a.tasks} per draw")]
    results = {}
    for key, what in rows:
        step, per = steps[key]
        results[key] = paired(Side("metareg", step, per), Side("learn2learn", l_one, 1), pairs=a.pairs, warmup=5)
        print(results[key].summary(what, "episodes/s"), flush=True)
    one = results["eps_one"]
    print(f"targets: >= 20x learn2learn episodes/s (one at a time): {'met' if one.ratio >= 20 else 'NOT met'}; "
          f"indexing < 0.5 s: {'met' if m_index < 0.5 else 'NOT met'}")
    print(json.dumps({"config": cfg, "index_s": {"metareg": m_index, "learn2learn": l_index},
                      **{k: r.as_dict() for k, r in results.items()}}))


if __name__ == "__main__":
    main()
