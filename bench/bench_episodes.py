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

Usage: python bench/bench_episodes.py [--zip PATH] [--seconds 2] [--rounds 3] [--tasks 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import metareg
from metareg.episodes import EpisodeSampler, episode_labels, generator, split_episodes

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
REFERENCE_L2L_EPS = 242.0  # shared/bench/README.md, 2-core CPU, same loop (used only without learn2learn)
REFERENCE_L2L_INDEX_S = 5.0


def timed(step, seconds: float) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of this process.

    On a shared machine the wall-clock rate also measures how often the scheduler
    lets us run; the CPU-time rate (one torch thread) counts only the work done.
    """
    for _ in range(5):
        step()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zip", type=Path, default=SHARED / "data" / "omniglot" / "images_background.zip")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measurements alternate between the libraries this many times; medians are reported")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both libraries (episode tensors are tiny: extra threads only "
                         "add synchronisation, badly so on a busy machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.zip.is_file():
        raise SystemExit(f"Omniglot background zip not found at {a.zip} (pass --zip or set METAREG_SHARED)")
    torch.manual_seed(0)
    x_u8, y, classes, load_s = load_omniglot(a.zip)
    x = x_u8.float().div(255)  # what the reference script feeds both loops
    cfg = f"{a.ways}-way {a.shots}-shot {a.queries}-query"
    print(f"Omniglot background: {len(y)} images, {len(classes)} classes, 28x28 (loaded in {load_s:.2f} s, "
          f"decoded once then cached); {cfg}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{a.rounds} rounds x {a.seconds:g} s per measurement; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    m_index, steps = metareg_steps(x, x_u8, y, classes, a.ways, a.shots, a.queries, a.tasks)
    try:
        version, l_index, l_one = l2l_step(x, y, a.ways, a.shots, a.queries)
        steps["l2l_one"] = (l_one, 1)
        measured = True
    except ImportError as exc:
        print(f"learn2learn is NOT importable ({exc}); comparing with the figures recorded in "
              "shared/bench/README.md instead (not measured in this run)")
        version, l_index, measured = "recorded", REFERENCE_L2L_INDEX_S, False
    rates: dict[str, list[float]] = {k: [] for k in steps}
    cpu_rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(a.rounds):  # alternate, so a change in machine load hits both libraries alike
        for name, (step, per) in steps.items():
            wall, cpu = timed(step, a.seconds)
            rates[name].append(wall * per)
            cpu_rates[name].append(cpu * per)
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
    m = {"index_s": m_index, **{k: v for k, v in med.items() if k != "l2l_one"}}
    ref = {"version": version, "index_s": l_index,
           "eps_one": med["l2l_one"] if measured else REFERENCE_L2L_EPS}
    tag = f"learn2learn {ref['version']}" + ("" if measured else " (recorded, not measured)")
    rows = [
        ("indexing (s)", f"{m['index_s']:.4f}", f"{ref['index_s']:.3f}",
         f"{ref['index_s'] / m['index_s']:.0f}x faster"),
        ("episodes/s, one at a time", f"{m['eps_one']:.0f}", f"{ref['eps_one']:.0f}",
         f"{m['eps_one'] / ref['eps_one']:.1f}x"),
        ("  same, uint8 store + float", f"{m['eps_one_uint8']:.0f}", "",
         f"{m['eps_one_uint8'] / ref['eps_one']:.1f}x"),
        ("  same, gather then split", f"{m['eps_one_split_after']:.0f}", "",
         f"{m['eps_one_split_after'] / ref['eps_one']:.1f}x"),
        (f"episodes/s, {a.tasks} per draw", f"{m['eps_batched']:.0f}", "",
         f"{m['eps_batched'] / ref['eps_one']:.1f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'metareg':>10}  {tag:>12}  ratio")
    for r in rows:
        print(f"{r[0]:{width}}  {r[1]:>10}  {r[2]:>12}  {r[3]}")
    if measured:
        per_round = [f"{mr / lr:.1f}x" for mr, lr in zip(rates["eps_one"], rates["l2l_one"], strict=True)]
        print(f"one-at-a-time ratio per round: {', '.join(per_round)}")
    if measured:
        print("per CPU second of this process (excludes waiting for a busy machine's cores):")
        for k, label in [("eps_one", "one at a time"), ("eps_one_uint8", "  uint8 store + float"),
                         ("eps_one_split_after", "  gather then split"), ("eps_batched", f"{a.tasks} per draw")]:
            print(f"  {label:26s} metareg {cpu_med[k]:8.0f}  learn2learn {cpu_med['l2l_one']:6.0f}  "
                  f"ratio {cpu_med[k] / cpu_med['l2l_one']:.1f}x")
    ok_speed = m["eps_one"] >= 20 * ref["eps_one"]
    ok_index = m["index_s"] < 0.5
    print(f"targets: >= 20x learn2learn episodes/s (one at a time): {'met' if ok_speed else 'NOT met'}; "
          f"indexing < 0.5 s: {'met' if ok_index else 'NOT met'}")
    print(json.dumps({"metareg": m, "learn2learn": ref, "l2l_measured": measured, "config": cfg,
                      "ratio_one": m["eps_one"] / ref["eps_one"], "ratio_batched": m["eps_batched"] / ref["eps_one"],
                      "rounds": rates, "cpu_rounds": cpu_rates}))


if __name__ == "__main__":
    main()
