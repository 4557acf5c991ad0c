"""Accuracy per second: the Omniglot prototypical-networks recipe trained for a fixed wall-clock time.

    python bench/omniglot_minute.py [--seconds 60] [--zip images_background.zip] [--device cuda|cpu]
                                    [--test-num-tasks 600] [--quick]

Trains `prototypicalnetworks` on Conv-4, Omniglot 28x28 with the `lake` split (whole alphabets held
out), 20-way 1-shot 15-query episodes, 32 per step, for ``--seconds`` of training (Lightning's
``max_time``), then tests the last weights on fixed seeded episodes of unseen alphabets at
5w1s, 5w5s, 20w1s and 20w5s: mean ± 95 % CI, beside Snell et al.'s figures after hours of training.
``--quick``: the tiny `glyphs` dataset for a few seconds on the CPU (the dry run of gpu_check.sh).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import metareg

SNELL = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}
SHARED = Path(os.environ.get("METAREG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--zip", type=Path, default=SHARED / "data" / "omniglot" / "images_background.zip")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--test-num-tasks", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help="glyphs, tiny, a few seconds: checks the script runs")
    a = ap.parse_args(argv)
    if a.quick:
        data = {"dataset": "glyphs", "dataset_options": {"image_size": 14, "samples_per_class": 6},
                "backbone_options": {"hidden": 8}, "meta_batch_size": 2, "queries": 2, "ways": 5}
    else:
        data = {"dataset": "omniglot", "dataset_options": {"root": str(a.zip), "split": "lake"},
                "meta_batch_size": 32, "queries": 15, "ways": 20}
    queries = 1 if a.quick else 15  # glyphs' 6 samples per class hold 5 shots + 1 query
    accelerator = "gpu" if a.device == "cuda" else "cpu"
    out = Path(tempfile.mkdtemp(prefix="metareg-minute-"))
    start = time.perf_counter()
    result = metareg.train(strategy="prototypicalnetworks", backbone="conv4", shots=1, lr=1e-3,
                           max_steps=10**7, max_epochs=-1, epoch_length=10**6, val_num_tasks=5,
                           trainer_options={"max_time": {"seconds": a.seconds}}, accelerator=accelerator,
                           test_ways=5, test_shots=1, test_num_tasks=a.test_num_tasks, test_queries=queries,
                           output_dir=out / "train", progress=False, **data)
    wall = time.perf_counter() - start
    checkpoint = result.run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        checkpoint = result.best_checkpoint
    import torch

    steps = torch.load(checkpoint, map_location="cpu", weights_only=True).get("global_step", "?")
    print(f"# omniglot_minute: trained {a.seconds:g} s ({wall:.0f} s with set-up and the first test), "
          f"{steps} steps of {data['meta_batch_size']} episodes, run {result.run_dir}", flush=True)
    for ways, shots in SNELL:
        report = metareg.evaluate(checkpoint, test_ways=ways, test_shots=shots, test_queries=queries,
                                  test_num_tasks=a.test_num_tasks, output_dir=out / f"{ways}w{shots}s",
                                  progress=False).report
        print(f"Omniglot ProtoNet {a.seconds:g} s {ways}w{shots}s: {100 * report.mean:.1f} ± {100 * report.ci95:.1f} % "
              f"({report.episodes} test episodes; Snell et al. {SNELL[ways, shots]})", flush=True)


if __name__ == "__main__":
    main()
