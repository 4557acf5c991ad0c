"""What claiming the run directory and the per-step finite checks cost a default `metareg run`.

Issue 13's bar: the lock and the checks add under 1 % to the default run's time.

Measured in one process, paired and interleaved (bench/paired.py: alternating turns, median of
per-pair ratios with a bootstrap 95 % interval, rates beside it):

- a default training step (the default RunConfig: Conv-4 prototypical networks, 5-way
  1-shot 5-query, 8 episodes per step, glyphs) with and without the two checks the learner
  adds to every step (gradients before the update, weights and buffers after it); turns of
  ``--steps`` steps, ``--reps`` pairs;
- claiming, checking and releasing a fresh run directory (lock, marker, holder record) against
  the plain ``mkdir`` of a directory it replaces, ``--claims`` directories per turn;
- the checks alone, timed over many calls, against the median step, and one claim against the
  default run's training time (300 steps; validation and test left out, so the share is overstated).

Prints the two paired lines and the overhead estimate.

Usage:  python bench/bench_rundir.py [--reps 30] [--steps 5] [--claims 20] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="pairs of timed blocks")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    parser.add_argument("--claims", type=int, default=20, help="run directories claimed and released per turn")
    parser.add_argument("--quick", action="store_true",
                        help="the test suite's smoke run: a one-episode step of an 8-filter Conv-4, few calls")
    args = parser.parse_args(argv)

    import torch

    from metareg.config import RunConfig
    from metareg.learner import all_finite
    from metareg.preparation import prepare
    from metareg.rundir import RunDir, check

    tiny = {"meta_batch_size": 1, "backbone_options": {"hidden": 8}} if args.quick else {}
    config = RunConfig.from_sources({"progress": False, **tiny})
    prepared = prepare(config)
    learner = prepared.learner
    learner.setup("fit")  # the default memory layout (channels_last for prototypical networks)
    prepared.datamodule.setup("fit")
    loader = prepared.datamodule.train_dataloader()
    # as the learner hands a batch to the strategy (on_after_batch_transfer)
    batches = [b.prepared(learner.transform) for _, b in zip(range(args.steps), loader, strict=False)]
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.lr)
    state = [t for t in [*learner.parameters(), *learner.buffers()]]

    def block(checked: bool):
        for episodes in batches:
            loss = learner.strategy.loss(episodes).loss
            optimizer.zero_grad()
            loss.backward()
            if checked:
                assert all_finite([p.grad for p in learner.parameters() if p.grad is not None])
            optimizer.step()
            if checked:
                assert all_finite(state)

    steps = paired(Side("with checks", lambda: block(True), len(batches)),
                   Side("without", lambda: block(False), len(batches)), pairs=args.reps, balance=False)
    step = 1 / steps.rate_b

    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    calls = 20 if args.quick else 2000
    start = time.perf_counter()
    for _ in range(calls):
        all_finite(grads)
        all_finite(state)
    checks = (time.perf_counter() - start) / calls

    with tempfile.TemporaryDirectory() as tmp:
        numbers = itertools.count()

        def claims():
            for _ in range(args.claims):
                path = Path(tmp) / f"run{next(numbers)}"
                check(path, "run")
                RunDir.claim(path, "run").release()

        def mkdirs():
            for _ in range(args.claims):
                (Path(tmp) / f"dir{next(numbers)}").mkdir(parents=True)

        claiming = paired(Side("claim", claims, args.claims), Side("mkdir", mkdirs, args.claims), pairs=args.reps)
    claim = 1 / claiming.rate_a
    run_steps = config.max_epochs * config.epoch_length

    print(f"# bench_rundir: default step {1000 * step:.1f} ms ({sum(p.numel() for p in learner.parameters())} "
          f"parameters, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(steps.summary("Training steps/s", "steps/s") + "  (target: >= 0.99x, checks under 1 %)")
    print(claiming.summary("Run directories/s", "dirs/s") + f"  (one claim per run: {1000 * claim:.2f} ms)")
    print(f"the two checks alone: {1e6 * checks:.0f} us per step = {100 * checks / step:.3f} % of a step")
    print(f"claim + release of a run directory = {100 * claim / (run_steps * step):.4f} % of the default run's "
          f"{run_steps} training steps")
    print(f"overhead estimate (checks per step + one claim per run): "
          f"{100 * (checks / step + claim / (run_steps * step)):.3f} %")


if __name__ == "__main__":
    main()
