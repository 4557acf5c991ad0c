"""Prediction speed of `metareg predict` / metareg.FewShotClassifier on CPU.

    python bench/bench_predict.py [--strategy prototypicalnetworks] [--size 28 --channels 1] [--hidden 64]
                                  [--queries 100] [--pairs 7] [--device cpu] [--threads N]

A 5-way 5-shot support folder and a batch of query PNG files on disk, a conv4 model
(untrained: speed does not depend on the weights). Each figure is paired and interleaved
with the reference below in one process (bench/paired.py: median of per-pair ratios,
bootstrap 95 % interval, rates beside them):

- reference: the strategy's ``forward`` on one episode holding the support set and the
  queries (what evaluation does), images already decoded: the model's own cost;
- predictions per second for a full request (decode support + queries, fit, predict)
  without the support cache, and with it (the support state read from the cache file);
- predictions per second for queries already decoded, after ``fit``;
- latency of one query file after ``fit``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import metareg
from metareg.build import build_model, resolve_all
from metareg.checkpoint import payload
from metareg.config import RunConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

try:  # where the support-folder reader lives (it moved out of predict.py)
    from metareg.predict_inputs import read_support_folder
except ImportError:  # pragma: no cover - older layout
    from metareg.predict import read_support_folder


def make_checkpoint(path: Path, strategy: str, channels: int, size: int, hidden: int, ways: int, shots: int) -> Path:
    config = RunConfig.from_sources({"backbone": "conv4", "backbone_options": {"hidden": hidden},
                                     "strategy": strategy, "ways": ways, "shots": shots})
    model, transform, task = build_model(resolve_all(config, dataset=False), config, channels, size, 64, "bench")
    state = {"strategy." + k: v for k, v in model.state_dict().items()}
    state |= {"transform." + k: v for k, v in transform.state_dict().items()}
    torch.save({"metareg": payload(config, task, "bench"), "state_dict": state}, path)
    return path


def make_images(root: Path, ways: int, shots: int, queries: int, channels: int, source_size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    shape = (source_size, source_size) if channels == 1 else (source_size, source_size, 3)
    for c in range(ways):
        d = root / "support" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(shots):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    q = root / "query"
    q.mkdir()
    for i in range(queries):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(q / f"{i:04d}.png")
    return root / "support", q


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", default="prototypicalnetworks")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--size", type=int, default=28, help="model image size")
    ap.add_argument("--source-size", type=int, default=105, help="size of the image files (resized on load)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "m.ckpt", args.strategy, args.channels, args.size, args.hidden, args.ways,
                               args.shots)
        support, query = make_images(tmp, args.ways, args.shots, args.queries, args.channels, args.source_size)
        files = sorted(query.iterdir())
        cache = tmp / "support.cache"
        clf = metareg.FewShotClassifier.from_checkpoint(ckpt, device=args.device, batch_size=args.queries)
        n = args.queries
        print(f"{args.strategy}, conv4 (hidden {args.hidden}), {args.channels}x{args.size}x{args.size} from "
              f"{args.source_size}px PNG files, {args.ways}-way {args.shots}-shot support, {n} queries, "
              f"device {args.device}, torch threads {torch.get_num_threads()}")

        # reference: one evaluation episode through forward, images decoded already
        sfiles = [f for fs in read_support_folder(support).values() for f in fs]
        s = clf.prepare(clf.load_images(sfiles)).unsqueeze(0)
        q = clf.prepare(clf.load_images(files)).unsqueeze(0)
        labels = torch.arange(args.ways).repeat_interleave(args.shots).unsqueeze(0).to(clf.device)
        episode = metareg.EpisodeBatch(s, labels, q, None, args.ways)

        def reference():
            with clf._grad():
                clf.strategy(episode)

        def request_no_cache():
            clf.fit(support)
            clf.predict(files)

        def request_cache():
            clf.fit(support, cache=cache)
            assert clf.fitted_from_cache
            clf.predict(files)

        clf.fit(support, cache=cache)  # write the cache
        decoded = clf.load_images(files)

        def decoded_after_fit():
            clf.predict_logits(decoded)

        sync = torch.cuda.synchronize if str(clf.device).startswith("cuda") else (lambda: None)
        reference_side = Side("forward", reference, n)
        for what, fn in {
            "request without cache (decode + fit + predict)": request_no_cache,
            "request with support cache": request_cache,
            "queries already decoded, after fit": decoded_after_fit,
        }.items():
            r = paired(Side("predict", fn, n), Side(reference_side.name, reference, n), pairs=args.pairs, sync=sync)
            print(r.summary(f"Predict queries/s, {what}", "queries/s"), flush=True)
        clf.fit(support)
        r = paired(Side("one query file", lambda: clf.predict(files[:1]), 1), Side("forward", reference, n),
                   pairs=args.pairs, sync=sync)
        print(f"Predict latency of one query file after fit: {1000 / r.rate_a:.2f} ms (median of {len(r.ratios)})")


if __name__ == "__main__":
    main()
