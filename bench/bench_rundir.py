"""What claiming the run directory and the per-step finite checks cost a default `metareg run`.

Issue 13's bar: the lock and the checks add under 1 % to the default run's time.

Measured in one process, interleaved in random order so that the machine's state hits both
sides alike:

- a default training step (the default RunConfig: Conv-4 prototypical networks, 5-way
  1-shot 5-query, 8 episodes per step, glyphs) with and without the two checks the learner
  adds to every step (gradients before the update, weights and buffers after it); blocks of
  ``--steps`` steps, ``--reps`` pairs, ratio with/without per pair;
- the checks alone, timed over many calls, against the median step;
- claiming and releasing a fresh run directory (lock, marker, holder record), once per run,
  against the default run's training time (300 steps; validation and test left out, so the
  share is overstated).

Prints the median ratio with a bootstrap 95 % interval, and the overhead estimate.

Usage:  python bench/bench_rundir.py [--reps 30] [--steps 5] [--claims 200]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path


def bootstrap_median(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds)]


def episodes_of(images, shots: int, transform):
    """A training batch as the learner hands it to the strategy (uint8 -> float, transform, split)."""
    from metareg.episodes import EpisodeBatch, episode_labels, split_episodes

    images = images.float().div_(255)
    b, ways, n = images.shape[:3]
    flat = transform(images.flatten(0, 2))
    images = flat.view(b, ways, n, *flat.shape[1:])
    support, query = split_episodes(images, shots)
    return EpisodeBatch(support=support, support_labels=episode_labels(b, ways, shots, images.device), query=query,
                        query_labels=episode_labels(b, ways, n - shots, images.device), ways=ways)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="pairs of timed blocks")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    parser.add_argument("--claims", type=int, default=200, help="run directories claimed and released")
    args = parser.parse_args()

    import torch

    from metareg.config import RunConfig
    from metareg.learner import all_finite
    from metareg.preparation import prepare
    from metareg.rundir import RunDir, check

    config = RunConfig.from_sources({"progress": False})
    prepared = prepare(config)
    learner = prepared.learner
    learner.setup("fit")  # the default memory layout (channels_last for prototypical networks)
    prepared.datamodule.setup("fit")
    loader = prepared.datamodule.train_dataloader()
    batches = [episodes_of(b["images"], config.shots, learner.transform) for _, b in zip(range(args.steps), loader,
                                                                                         strict=False)]
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.lr)
    state = [t for t in [*learner.parameters(), *learner.buffers()]]

    def block(checked: bool) -> float:
        start = time.perf_counter()
        for episodes in batches:
            loss = learner.strategy.loss(episodes).loss
            optimizer.zero_grad()
            loss.backward()
            if checked:
                assert all_finite([p.grad for p in learner.parameters() if p.grad is not None])
            optimizer.step()
            if checked:
                assert all_finite(state)
        return (time.perf_counter() - start) / len(batches)

    block(False)  # warm-up
    rng = random.Random(0)
    ratios, plain = [], []
    for _ in range(args.reps):
        order = [True, False]
        rng.shuffle(order)
        times = {checked: block(checked) for checked in order}
        ratios.append(times[True] / times[False])
        plain.append(times[False])
    step = statistics.median(plain)

    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        all_finite(grads)
        all_finite(state)
    checks = (time.perf_counter() - start) / calls

    claims = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.claims):
            path = Path(tmp) / f"run{i}"
            start = time.perf_counter()
            check(path, "run")
            RunDir.claim(path, "run").release()
            claims.append(time.perf_counter() - start)
    claim = statistics.median(claims)
    run_steps = config.max_epochs * config.epoch_length

    low, high = bootstrap_median(ratios)
    print(f"default step: {1000 * step:.1f} ms (median of {args.reps} blocks of {args.steps} steps, "
          f"{sum(p.numel() for p in learner.parameters())} parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(f"step with checks / without: median {statistics.median(ratios):.4f}, "
          f"bootstrap 95% interval [{low:.4f}, {high:.4f}] over {args.reps} interleaved pairs")
    print(f"the two checks alone: {1e6 * checks:.0f} us per step = {100 * checks / step:.3f} % of a step")
    print(f"claim + release of a run directory: {1000 * claim:.2f} ms (median of {args.claims}) = "
          f"{100 * claim / (run_steps * step):.4f} % of the default run's {run_steps} training steps")
    print(f"overhead estimate (checks per step + one claim per run): "
          f"{100 * (checks / step + claim / (run_steps * step)):.3f} %")


if __name__ == "__main__":
    main()
