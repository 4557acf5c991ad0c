"""Open-set answers ("unknown"): how well the calibrated threshold separates known from unseen classes.

Trains a prototypical network (or takes --checkpoint), calibrates the threshold on episodes of
the VALIDATION classes to --max-false-accept (as `metareg export --support` does), then draws
open-set episodes from the TEST classes, which neither training nor calibration saw: each has
`ways` known classes (support + queries) and queries of `ways` other test classes (unknown).
Prints, for the stored score (largest logit) and for the largest softmax probability:

  AUROC          P(a known query scores above an unknown one)
  false accept   unknown queries given a class (target: --max-false-accept)
  false reject   known queries answered "unknown"
  closed-set     accuracy on known queries without rejection, and with it (rejected = wrong)

  python bench/bench_open_set.py [--datasets glyphs,omniglot] [--omniglot PATH/images_background.zip]
      [--steps 400] [--ways 5] [--shots 5] [--episodes 200] [--checkpoint CKPT] [--quick]

No paired timing here (bench/paired.py): the figures are rates of answers on fixed, seeded episodes,
not speeds, so the host's load cannot move them and the two scores are compared on the very same
episodes already. The seconds column is context only. ``--quick`` (the test suite's smoke run)
trains a few steps and scores a few episodes, to show the script still runs, not to measure.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import metareg
from metareg import open_set


def max_probability(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(-1).max(-1).values


def train(dataset: str, options: dict, steps: int, out: Path, quick: bool = False) -> Path:
    epochs = 1 if quick else 4
    result = metareg.train(dataset=dataset, dataset_options=options, strategy="prototypicalnetworks",
                           backbone="conv4", ways=20, shots=1, queries=5, meta_batch_size=1 if quick else 4, lr=1e-3,
                           epoch_length=max(1, steps // epochs), max_epochs=epochs,
                           test_num_tasks=2 if quick else 100, val_num_tasks=2 if quick else 20,
                           backbone_options={"hidden": 8} if quick else {}, progress=False, output_dir=out)
    print(f"{dataset}: trained {steps} steps, 20-way 1-shot test accuracy {result.report.mean:.3f} "
          f"({result.best_checkpoint})", flush=True)
    return Path(result.best_checkpoint)


def measure(ckpt: Path, args) -> None:
    clf = metareg.FewShotClassifier.from_checkpoint(ckpt)
    data = open_set.training_dataset(clf)
    common = dict(ways=args.ways, shots=args.shots, queries=args.queries, episodes=args.episodes)
    print(f"{clf.model.config.dataset}: {data.validation.num_classes} validation classes (calibration), "
          f"{data.test.num_classes} test classes (report); {args.ways}-way {args.shots}-shot, {args.queries} queries "
          f"per class, {args.episodes} episodes each")
    print(f"{'score':16} {'AUROC':>6} {'threshold':>10} {'val FA':>7} {'test FA':>8} {'test FR':>8} "
          f"{'closed-set':>10} {'with reject':>11} {'seconds':>7}")
    for name, fn in (("max_logit*", open_set.score), ("max_probability", max_probability)):
        start = time.perf_counter()
        val = open_set.episode_scores(clf, data.validation, seed=1, score_fn=fn, **common)
        threshold = open_set.threshold_for(val.unknown, args.max_false_accept)
        test = open_set.episode_scores(clf, data.test, seed=2, score_fn=fn, **common)
        s = open_set.summary(test, threshold)
        v = open_set.summary(val, threshold)
        print(f"{name:16} {s['auroc']:6.3f} {threshold:10.4g} {v['false_accept']:7.1%} {s['false_accept']:8.1%} "
              f"{s['false_reject']:8.1%} {s['closed_set_accuracy']:10.1%} {s['accuracy_with_rejection']:11.1%} "
              f"{time.perf_counter() - start:7.1f}", flush=True)
    print("* the score metareg stores (metareg.open_set.SCORE)\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="glyphs")
    ap.add_argument("--omniglot", help="path of images_background.zip (for --datasets omniglot)")
    ap.add_argument("--checkpoint", help="measure this checkpoint instead of training one")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--max-false-accept", type=float, default=0.05)
    ap.add_argument("--out", help="folder for run directories (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="smoke run: an 8-filter Conv-4, one small epoch")
    args = ap.parse_args(argv)
    if args.checkpoint:
        measure(Path(args.checkpoint), args)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="metareg-open-set-"))
    for dataset in args.datasets.split(","):
        options = {}
        if dataset == "omniglot":
            if not args.omniglot:
                print("skipping omniglot: pass --omniglot PATH/images_background.zip")
                continue
            options = {"root": args.omniglot, "split": "lake"}
        measure(train(dataset, options, args.steps, out / dataset, args.quick), args)


if __name__ == "__main__":
    main()
