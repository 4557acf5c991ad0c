"""Shards vs in memory: peak memory (RSS) and episodes/s of the same test episodes.

For each dataset, the script writes its shards once (``metareg shard``, into ``--work``), then:

  memory   child processes, one per loading mode, taken in turns (memory, shards, memory, ...):
           each imports the same modules, builds the dataset (the registered one in memory, or
           ``shards`` over the folder), draws ``--episodes`` test episodes (5-way 5-shot 15-query,
           the field's protocol) exactly as a run's test loop does, and reports its peak RSS
           (VmHWM), its RSS after the imports (baseline) and a digest of every image it drew:
           equal digests mean the same episodes, image for image.
  speed    both datasets in one process, timed paired and interleaved (bench/paired.py): each turn
           draws and gathers ``--batch`` episodes; median per-pair ratio with a bootstrap 95 % interval.

Datasets: glyphs at a size where memory matters (``--glyphs-opt``; default 64 px, 40 renderings per
class, ~88,000 images), and real Omniglot when ``../shared/data/omniglot/images_background.zip`` exists.

Usage: python bench/bench_shards.py [--episodes 600] [--pairs 10] [--memory-pairs 2] [--work DIR]
           [--glyphs-opt image_size=64 --glyphs-opt samples_per_class=40] [--datasets glyphs,omniglot]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
OMNIGLOT_ZIP = SHARED / "data" / "omniglot" / "images_background.zip"


def _status(key: str) -> float:
    """A /proc/self/status figure in MB (VmHWM: peak RSS; RssAnon / RssFile: heap vs mapped files now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(mode: str, dataset: str, options: dict, shards_dir: str):
    from metareg import kinds
    from metareg.build import resolve
    from metareg.registry import Registry

    if mode == "shards":
        return resolve(Registry.current(), kinds.DATASET.plural, "shards", {"root": shards_dir}).build()
    return resolve(Registry.current(), kinds.DATASET.plural, dataset, options).build()


def sampler_of(data, args):
    from metareg.episodes import EpisodeSampler

    test = data.test
    return EpisodeSampler(test.labels, test.classes, ways=args.ways, shots=args.shots, queries=args.queries,
                          split="test")


def draws(data, args):
    """``(B, ways, shots+queries)`` index batches of the fixed test episodes, as the datamodule draws them."""
    from metareg.episodes import generator

    sampler = sampler_of(data, args)
    for k, start in enumerate(range(0, args.episodes, args.batch)):
        yield sampler.sample(min(args.batch, args.episodes - start), generator(0, "test", k))


def child(args) -> None:
    import torch  # noqa: F401 - both modes pay for the same imports before the baseline is read

    import metareg  # noqa: F401
    if args.child == "shards":
        from metareg.shard_format import litdata

        litdata()
    baseline = _status("VmRSS")
    start = time.perf_counter()
    data = build(args.child, args.dataset, dict(args.options), args.shards)
    digest = hashlib.blake2b(digest_size=8)
    opened = time.perf_counter() - start
    for index in draws(data, args):
        digest.update(data.test.images.gather(index).numpy().tobytes())
    print(json.dumps({"peak_mb": _status("VmHWM"), "baseline_mb": baseline, "anon_mb": _status("RssAnon"),
                      "file_mb": _status("RssFile"), "open_s": opened, "seconds": time.perf_counter() - start,
                      "digest": digest.hexdigest()}))


def run_child(mode: str, dataset: str, options: dict, shards_dir: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--dataset", dataset, "--shards", shards_dir,
           "--episodes", str(args.episodes), "--batch", str(args.batch), "--ways", str(args.ways),
           "--shots", str(args.shots), "--queries", str(args.queries)]
    for key, value in options.items():
        cmd += ["--option", f"{key}={value}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(dataset: str, options: dict, shards_dir: str, args):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paired import Side, paired

    from metareg.episodes import generator

    sides = []
    for mode in ("shards", "memory"):
        data = build(mode, dataset, options, shards_dir)
        sampler, test = sampler_of(data, args), data.test
        counter = iter(range(10**9))

        def step(sampler=sampler, store=test.images, counter=counter):
            # the i-th call of each side draws the same episodes
            return store.gather(sampler.sample(args.batch, generator(0, "bench", next(counter))))

        sides.append(Side(mode, step, units=args.batch))
    return paired(*sides, pairs=args.pairs)


def write_shards(dataset: str, options: dict, work: Path) -> Path:
    key = hashlib.blake2b(repr(sorted(options.items())).encode(), digest_size=4).hexdigest()
    folder = work / f"{dataset}-{key}"  # options may hold paths: a digest names the folder
    if not (folder / "metareg-shards.json").is_file():
        cmd = [str(Path(sys.executable).with_name("metareg")), "shard", dataset, str(folder)]
        for key, value in options.items():
            cmd += ["--dataset-opt", f"{key}={value}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"  wrote {folder} in {time.perf_counter() - start:.0f} s")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    print(f"  shard folder: {size:.0f} MB")
    return folder


def bench(dataset: str, options: dict, args) -> dict:
    print(f"{dataset} {options}:")
    folder = write_shards(dataset, options, Path(args.work))
    rows = {"memory": [], "shards": []}
    for _ in range(args.memory_pairs):
        for mode in ("memory", "shards"):
            rows[mode].append(run_child(mode, dataset, options, str(folder), args))
    digests = {r["digest"] for mode in rows for r in rows[mode]}
    for mode, results in rows.items():
        peak = min(r["peak_mb"] for r in results)
        base = min(r["baseline_mb"] for r in results)
        end = results[0]
        print(f"  {mode:6s} peak RSS {peak:7.0f} MB (after imports {base:4.0f} MB; at the end: heap "
              f"{end['anon_mb']:.0f} MB, mapped files {end['file_mb']:.0f} MB), {args.episodes} episodes in "
              f"{min(r['seconds'] for r in results):.1f} s (opening {min(r['open_s'] for r in results):.1f} s)")
    print(f"{dataset} same episodes, image for image: {'yes' if len(digests) == 1 else 'NO: ' + ', '.join(digests)}")
    result = speed(dataset, options, str(folder), args)
    print(result.summary(f"{dataset} episodes/s ({args.ways}-way {args.shots}-shot {args.queries}-query, "
                         f"{args.batch} per turn)"))
    return {"dataset": dataset, "options": options, "memory": rows, "same_episodes": len(digests) == 1,
            "speed": result.as_dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--batch", type=int, default=25, help="episodes per gather (a run's eval meta-batch)")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--memory-pairs", type=int, default=2)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "metareg-bench-shards"))
    p.add_argument("--glyphs-opt", action="append", default=None, metavar="KEY=VALUE")
    p.add_argument("--datasets", default="glyphs,omniglot", help="which of glyphs, omniglot to measure")
    p.add_argument("--json", help="also write the figures here")
    # internal: one loading mode in a child process
    p.add_argument("--child", choices=["memory", "shards"], help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--shards", help=argparse.SUPPRESS)
    p.add_argument("--option", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    args.options = args.option
    if args.child:
        return child(args)
    glyphs = dict(s.split("=", 1) for s in (args.glyphs_opt or ["image_size=64", "samples_per_class=40"]))
    wanted = args.datasets.split(",")
    results = [bench("glyphs", glyphs, args)] if "glyphs" in wanted else []
    if "omniglot" not in wanted:
        pass
    elif OMNIGLOT_ZIP.is_file():
        results.append(bench("omniglot", {"root": str(OMNIGLOT_ZIP), "split": "lake"}, args))
    else:
        print(f"omniglot: skipped, {OMNIGLOT_ZIP} not found (set METAREG_SHARED)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
