"""Nearest-prototype search at 1,000, 10,000 and 100,000 classes: queries/s, peak memory, recall.

    python bench/bench_prototype_search.py [--classes 1000 10000 100000] [--dim 64] [--queries 256]
                                           [--repeats 5] [--chunk 8192] [--nprobe 16] [--threads N] [--pairs 10]
                                           [--methods full exact exact-bf16 faiss]

Synthetic prototypes (Gaussian, ``--dim`` features) and queries near a random class (its
prototype plus noise). For each class count, each method runs in a fresh process (so its peak
resident memory is its own) over the same data:

- ``full``: every class scored at once (``-cdist^2``, its log-sum-exp, then top-k), the reference:
  what ``PrototypeHead.logits`` and a softmax do today;
- ``exact``: :class:`metareg.prototype_search.ExactSearch`, ``--chunk`` classes at a time;
- ``exact-bf16``: the same with the prototypes stored and multiplied in bfloat16;
- ``faiss``: :class:`metareg.prototype_search.FaissSearch` (inverted file, ``--nprobe`` cells), when
  ``faiss-cpu`` is installed (``pip install 'metareg-core[faiss]'``).

Columns: queries/s (median of ``--repeats`` timed searches of ``--queries`` queries after one
warm-up), the peak resident memory the search added above the process with its data loaded
(``ru_maxrss`` after minus RSS before), the index build time, and recall@1 / recall@5 against the
``full`` reference (a class in the reference top-5 found in the method's top-5).

The speed figures are then paired: for each class count one more process builds every method
and times each against ``full`` in alternating turns (bench/paired.py: median of per-pair ratios,
bootstrap 95 % interval, rates beside it), one line per method:

    Prototype search queries/s, 10000 classes: exact / full = 1.10x [95% CI ...] (...; 10 pairs)

The table's queries/s come from separate processes, one after the other, and move with the host's
load; compare methods by the paired lines.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

METHODS = ("full", "exact", "exact-bf16", "faiss")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _data(classes: int, dim: int, queries: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, dim, generator=g)
    truth = torch.randint(classes, (queries,), generator=g)
    return protos, protos[truth] + 0.7 * torch.randn(queries, dim, generator=g)


def _full(protos):
    def search(query, k):
        logits = -torch.cdist(query, protos).pow(2)
        logits.logsumexp(-1)  # the softmax normaliser every probability needs, as ExactSearch computes it
        return logits.topk(k, dim=-1).indices
    return search


def searcher(method: str, protos, chunk: int, nprobe: int):
    """``search(query, k) -> indices`` of one method over ``protos``."""
    from metareg import prototype_search as ps

    if method == "full":
        return _full(protos)
    index = ps.build_search(protos, "euclidean", 1.0, index="faiss" if method == "faiss" else "exact",
                            chunk_size=chunk, dtype=torch.bfloat16 if method == "exact-bf16" else None, nprobe=nprobe)
    return lambda q, k: index.search(q, k).indices


def compare(methods: list[str], classes: int, args) -> None:
    """Each method against ``full``, paired and interleaved in this process: one line each."""
    protos, query = _data(classes, args.dim, args.queries)
    reference = searcher("full", protos, args.chunk, args.nprobe)
    for method in methods:
        if method == "full":
            continue
        search = searcher(method, protos, args.chunk, args.nprobe)
        r = paired(Side(method, lambda s=search: s(query, 5), args.queries),
                   Side("full", lambda: reference(query, 5), args.queries), pairs=args.pairs)
        print(r.summary(f"Prototype search queries/s, {classes} classes", "queries/s"), flush=True)


def measure(method: str, classes: int, dim: int, queries: int, repeats: int, chunk: int, nprobe: int) -> dict:
    protos, query = _data(classes, dim, queries)
    before = _rss_mb()
    start = time.perf_counter()
    search = searcher(method, protos, chunk, nprobe)
    if method != "full":
        del protos  # the index holds its own copy: count what serving would keep
    build = time.perf_counter() - start
    top = search(query, 5)  # warm-up, and the answers compared for recall
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search(query, 5)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times.sort()
    return {"qps": queries / times[len(times) // 2], "peak_mb": max(0.0, peak - before), "build_s": build,
            "top": top.tolist()}


def _command(args, method: str, classes: int) -> list[str]:
    cmd = [sys.executable, __file__, "--one", method, str(classes), "--dim", str(args.dim), "--queries",
           str(args.queries), "--repeats", str(args.repeats), "--chunk", str(args.chunk), "--nprobe", str(args.nprobe),
           "--pairs", str(args.pairs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _run_one(args, method: str, classes: int) -> dict | None:
    done = subprocess.run(_command(args, method, classes), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {method}: failed: {done.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=10, help="timed pairs per paired comparison with full")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods measured (full, the reference, is always one)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one and args.one[0].startswith("paired:"):
        compare(args.one[0].split(":", 1)[1].split(","), int(args.one[1]), args)
        return
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.dim, args.queries, args.repeats, args.chunk, args.nprobe)
        print(json.dumps(result))
        return
    try:
        import faiss  # noqa: F401
        methods = ["full", *(m for m in args.methods if m != "full")]
    except ImportError:
        methods = ["full", *(m for m in args.methods if m not in ("full", "faiss"))]
        print("faiss-cpu is not installed: the approximate index is left out (pip install 'metareg-core[faiss]')")
    print(f"{args.dim}-d prototypes, batches of {args.queries} queries, chunks of {args.chunk} classes, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'classes':>8} {'method':<11} {'queries/s':>10} {'peak MB':>8} {'build s':>8} {'recall@1':>9} "
          f"{'recall@5':>9}")
    for classes in args.classes:
        results = {m: _run_one(args, m, classes) for m in methods}
        ref = results.get("full")
        for method, r in results.items():
            if r is None:
                continue
            if ref is not None:
                r1 = sum(a[0] == b[0] for a, b in zip(r["top"], ref["top"], strict=True)) / len(r["top"])
                r5 = sum(len(set(a) & set(b)) for a, b in zip(r["top"], ref["top"], strict=True)) / (5 * len(r["top"]))
                recall = f"{r1:>9.3f} {r5:>9.3f}"
            else:
                recall = f"{'-':>9} {'-':>9}"
            print(f"{classes:>8} {method:<11} {r['qps']:>10.0f} {r['peak_mb']:>8.1f} {r['build_s']:>8.2f} {recall}",
                  flush=True)
    for classes in args.classes:  # after the table: each process above had the machine's memory to itself
        done = subprocess.run(_command(args, "paired:" + ",".join(methods), classes), capture_output=True, text=True)
        print(done.stdout.strip() if done.returncode == 0 else
              f"Prototype search queries/s, {classes} classes: no ratio ({done.stderr.strip().splitlines()[-1]})",
              flush=True)


if __name__ == "__main__":
    main()
