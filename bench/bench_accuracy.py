"""Accuracy of metareg strategies on Omniglot (held-out alphabets) and on glyphs, mean ± 95% CI.

Trains each strategy once, then evaluates the best checkpoint on fixed, seeded test
episodes at several protocols, and prints a table beside published anchors.

  python bench/bench_accuracy.py --omniglot ../shared/data/omniglot/images_background.zip \
      [--strategies prototypicalnetworks,maml] [--steps 600] [--datasets omniglot,glyphs] [--quick]

With only the background set, the `lake` split holds out whole alphabets: 20 for
training, 5 for validation, 5 for testing (classes never seen in training).

No paired timing here (bench/paired.py): each figure is an accuracy on fixed, seeded test
episodes, with its own confidence interval, and the reference it stands beside is a published
number, not a loop that could run in this process; the host's load moves the training minutes
(context) but not the accuracies. ``--quick`` (the test suite's smoke run) trains a few steps of
an 8-filter Conv-4 and tests on a few episodes, to show the script still runs, not to measure.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import metareg

PUBLISHED = {  # Omniglot, Conv-4 (Snell et al. 2017; Finn et al. 2017)
    ("prototypicalnetworks", 5, 1): 98.8, ("prototypicalnetworks", 5, 5): 99.7, ("prototypicalnetworks", 20, 1): 96.0,
    ("maml", 5, 1): 98.7, ("maml", 5, 5): 99.9,
}
# Training settings per strategy: what the papers do, on a CPU-sized budget.
TRAIN = {
    "prototypicalnetworks": dict(ways=20, shots=1, queries=5, meta_batch_size=4, lr=1e-3),
    # MAML's Omniglot network (stride-2 convs): learn2learn's OmniglotCNN, the paper's setting.
    "maml": dict(ways=5, shots=1, queries=5, meta_batch_size=16, lr=1e-3, backbone="conv4-omniglot",
                 strategy_options={"adaptation_steps": 1, "adaptation_lr": 0.4, "test_adaptation_steps": 3}),
    # ANIL's head is meta-learnt for exactly its training steps: with lr 0.4, 2-3 test steps overshoot
    # (5w5s: 93.1 % after 1 step, 83.3 % after 3, 95.5 % after 10), so it tests with the 1 it trained with.
    "anil": dict(ways=5, shots=1, queries=5, meta_batch_size=16, lr=1e-3, backbone="conv4-omniglot",
                 strategy_options={"adaptation_steps": 1, "adaptation_lr": 0.4}),
    "metaoptnet": dict(ways=5, shots=1, queries=5, meta_batch_size=8, lr=1e-3),
    "default": dict(ways=5, shots=1, queries=5, meta_batch_size=8, lr=1e-3),
}
PROTOCOLS = [(5, 1), (5, 5), (20, 1)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omniglot", help="path of images_background.zip")
    ap.add_argument("--datasets", default="omniglot,glyphs")
    ap.add_argument("--strategies", default="prototypicalnetworks")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of training")
    ap.add_argument("--test-num-tasks", type=int, default=600)
    ap.add_argument("--out", default=None, help="folder for the run directories (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: an 8-filter Conv-4, one epoch, 2 val episodes")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="metareg-accuracy-"))
    rows = []
    for dataset in args.datasets.split(","):
        if dataset == "omniglot":
            if not args.omniglot:
                print("skipping omniglot: pass --omniglot PATH/images_background.zip")
                continue
            data = {"dataset": "omniglot", "dataset_options": {"root": args.omniglot, "split": "lake"}}
        else:
            data = {"dataset": dataset, "dataset_options": {}}
        for strategy in args.strategies.split(","):
            settings = {"backbone": "conv4", **TRAIN.get(strategy, TRAIN["default"])}
            if args.quick:
                settings |= {"meta_batch_size": 1, "backbone_options": {"hidden": 8}}
            # A learned MAML/ANIL head has `ways` outputs: only protocols with that many ways.
            protocols = [p for p in PROTOCOLS if strategy not in ("maml", "anil") or p[0] == settings["ways"]]
            epochs = 1 if args.quick else 4
            start = time.perf_counter()
            result = metareg.train(strategy=strategy, output_dir=out / f"{dataset}-{strategy}",
                                   epoch_length=max(1, args.steps // epochs), max_epochs=epochs,
                                   test_num_tasks=args.test_num_tasks, test_ways=protocols[0][0],
                                   test_shots=protocols[0][1], test_queries=15, val_num_tasks=2 if args.quick else 100,
                                   progress=False, **data, **settings)
            minutes = (time.perf_counter() - start) / 60
            for ways, shots in protocols:
                if (ways, shots) == protocols[0]:
                    report = result.report
                else:
                    report = metareg.evaluate(result.best_checkpoint, test_ways=ways, test_shots=shots,
                                              test_queries=15, test_num_tasks=args.test_num_tasks,
                                              output_dir=out / f"{dataset}-{strategy}-{ways}w{shots}s",
                                              progress=False).report
                rows.append({"dataset": dataset, "strategy": strategy, "protocol": f"{ways}w{shots}s",
                             "accuracy": round(100 * report.mean, 2), "ci95": round(100 * report.ci95, 2),
                             "episodes": report.episodes, "backbone": settings["backbone"], "steps": args.steps,
                             "train_minutes": round(minutes, 1),
                             "published": PUBLISHED.get((strategy, ways, shots)) if dataset == "omniglot" else None})
                print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{'dataset':10} {'strategy':22} {'protocol':8} {'accuracy':>16} {'published':>9} {'train min':>9}")
    for r in rows:
        acc = f"{r['accuracy']:.1f} ± {r['ci95']:.1f} %"
        pub = f"{r['published']:.1f}" if r["published"] else "-"
        print(f"{r['dataset']:10} {r['strategy']:22} {r['protocol']:8} {acc:>16} {pub:>9} {r['train_minutes']:>9}")


if __name__ == "__main__":
    main()
