"""Meta-training speed of metareg's strategies against learn2learn's own loops, same run, same data.

Conv-4 (64 filters) on real Omniglot at 28x28 (strokes = 1), the setting of learn2learn's
maml_omniglot example. Each metareg mode runs the same network as the learn2learn loop it is
compared with: MAML and ANIL use ``conv4-omniglot`` (stride-2 convs, last map averaged:
learn2learn's OmniglotCNN, 112,261 parameters with the 5-way head), the other strategies
``conv4`` (2x2 max-pools: learn2learn's CNN4Backbone). Every mode runs in its own fresh Python
process (so peak memory is per mode) and includes episode sampling in its step, as
learn2learn's loops include theirs:

  metareg-maml          5-way 1-shot 1-query, 32 tasks per step, 1 inner step, second order
  l2l-maml              learn2learn's MAML clone/adapt loop, same work (shared/bench/learn2learn_reference.py)
  metareg-protonet      5-way 5-shot 15-query, 32 episodes per step
  l2l-protonet          learn2learn Taskset + ProtoNet loss, one episode per step
  metareg-anil          as metareg-maml, only the head adapted
  metareg-metaoptnet-svm / -ridge   5-way 5-shot 15-query, 32 episodes per step
  metareg-default       supervised batches of 640 images (= 32 x 20), all 964 classes
  ref-batched-protonet / ref-vmap-maml   (only with --modes) the reference file's own plain-tensor
                        loops, to tell the machine's state from metareg's overhead

Targets (issue 5): MAML >= 2.5x learn2learn's steps/s on CPU (15x on a GPU); ProtoNet with 32
episodes per step >= 3x learn2learn's per-episode loop in episodes/s on CPU (10x on a GPU).

Usage:  python bench/bench_strategies.py [--seconds 5] [--device cpu|cuda] [--modes m1 m2 ...]
        [--bf16] [--data path/to/images_background.zip] [--channels-last] [--rounds N] [--profile N]
The first run decodes the Omniglot zip (about half a minute) into .cache/bench/omniglot28.npz.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "bench" / "learn2learn_reference.py"
ZIP = SHARED / "data" / "omniglot" / "images_background.zip"
CACHE = ROOT / ".cache" / "bench" / "omniglot28.npz"

WAYS, TASKS = 5, 32
METAREG_MODES = {
    # mode: (strategy factory, options, shots, queries, backbone factory)
    "metareg-maml": ("metareg_strategies.maml:MAML", {"adaptation_steps": 1, "adaptation_lr": 0.4}, 1, 1,
                     "conv4_omniglot"),
    "metareg-protonet": ("metareg_strategies.protonet:PrototypicalNetworks", {}, 5, 15, "conv4"),
    "metareg-anil": ("metareg_strategies.anil:ANIL", {"adaptation_steps": 1}, 1, 1, "conv4_omniglot"),
    "metareg-metaoptnet-svm": ("metareg_strategies.metaoptnet:MetaOptNet", {"base_learner": "svm"}, 5, 15, "conv4"),
    "metareg-metaoptnet-ridge": ("metareg_strategies.metaoptnet:MetaOptNet", {"base_learner": "ridge"}, 5, 15,
                                 "conv4"),
    "metareg-default": ("metareg_strategies.supervised:Supervised", {}, 5, 15, "conv4"),
}
L2L_MODES = ("l2l-maml", "l2l-protonet")
# The reference file's own plain-tensor loops, for context (not in the default run).
REFERENCE_MODES = {"ref-batched-protonet": "batched-protonet", "ref-vmap-maml": "vmap-maml"}
DEFAULT_MODES = ["metareg-maml", "l2l-maml", "metareg-protonet", "l2l-protonet", "metareg-anil",
                 "metareg-metaoptnet-svm", "metareg-metaoptnet-ridge", "metareg-default"]


# ------------------------------------------------------------------ data
def omniglot(zip_path: Path, size: int = 28):
    """(x (N,1,S,S) float32 in [0,1], strokes = 1; y (N,) int64), cached as npz."""
    import numpy as np

    if CACHE.is_file():
        z = np.load(CACHE)
        return z["x"], z["y"]
    if not zip_path.is_file():
        raise SystemExit(f"Omniglot not found at {zip_path}; pass --data or set METAREG_SHARED")
    from PIL import Image

    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png"))
        keys = sorted({tuple(n.split("/")[-3:-1]) for n in names})
        ids = {k: i for i, k in enumerate(keys)}
        x = np.empty((len(names), 1, size, size), np.float32)
        y = np.empty(len(names), np.int64)
        for i, n in enumerate(names):
            im = Image.open(io.BytesIO(z.read(n))).convert("L").resize((size, size), Image.LANCZOS)
            x[i, 0] = 1.0 - np.asarray(im, np.float32) / 255.0
            y[i] = ids[tuple(n.split("/")[-3:-1])]
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, x=x, y=y)
    return x, y


# ------------------------------------------------------------------ timing
PROFILE_STEPS = 0  # --profile N: after timing, profile N more steps (CPU only)
PROFILED: list[dict] = []


def timed(step, seconds: float, sync, warmup: int = 1, min_steps: int = 2) -> float:
    for _ in range(warmup):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync()
    rate = n / (time.perf_counter() - t0)
    if PROFILE_STEPS:
        PROFILED.append(convolution_time(step, PROFILE_STEPS))
    return rate


def convolution_time(step, steps: int) -> dict:
    """Seconds per step inside convolution kernels (forward and backward) vs. the whole profiled step.

    The convolutions are the work every loop here must do; what is left (batch norm, ReLU,
    pooling, optimiser, sampling, Python) is what a faster loop can save. A loop that did the
    same convolutions at the same speed and nothing else could go at most
    1 / convolution share of the profiled loop's speed.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    conv = sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key.startswith("aten::") and "convolution" in e.key) / 1e6 / steps
    return {"conv_s_per_step": conv, "profiled_s_per_step": wall}


def stolen_seconds() -> float | None:
    """CPU time the hypervisor gave to other machines so far (Linux /proc/stat "steal"), or None.

    On a shared host a mode that uses both cores loses more to steal than a one-thread loop, so
    ratios taken while this grows are not comparable; the driver prints it beside each mode."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {"peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_metareg(mode: str, x, y, device: str, seconds: float, bf16: bool, channels_last: bool | None = None) -> dict:
    import contextlib

    import torch
    from metareg_backbones import conv

    import metareg
    from metareg.episodes import episode_labels, split_episodes

    factory_ref, options, shots, queries, backbone_name = METAREG_MODES[mode]
    module, attr = factory_ref.split(":")
    factory = getattr(importlib.import_module(module), attr)
    torch.manual_seed(0)
    backbone = getattr(conv, backbone_name)(channels=1, image_size=28)
    classes = [f"c{i}" for i in range(int(y.max()) + 1)]
    task = metareg.TaskInfo(ways=WAYS, shots=shots, queries=queries, test_ways=WAYS, test_shots=shots,
                            test_queries=queries, num_train_classes=len(classes), channels=1, image_size=28,
                            feature_dim=backbone.out_features)
    strategy = factory(**options)
    strategy.setup(backbone, task)
    strategy.to(device).train()
    images = x.to(device)
    if channels_last is None:  # as `metareg run` decides when --channels-last is not given
        channels_last = strategy.channels_last
    if channels_last:
        strategy.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in strategy.parameters() if p.requires_grad], 1e-3)
    labels_all = y.to(device)
    gen = torch.Generator().manual_seed(0)
    amp = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if strategy.train_batches == "labelled":
        batch = TASKS * (shots + queries)

        def step():
            idx = torch.randint(0, len(images), (batch,), generator=gen).to(device)
            with amp:
                out = strategy.labelled_loss(images[idx], labels_all[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        rate = timed(step, seconds, sync)
        return {"config": f"supervised batches of {batch} images, {len(classes)} classes",
                "steps_per_s": round(rate, 4), "images_per_s": round(rate * batch, 1)}

    sampler = metareg.EpisodeSampler(y, classes, ways=WAYS, shots=shots, queries=queries, split="train")
    support_labels = episode_labels(TASKS, WAYS, shots, device)
    query_labels = episode_labels(TASKS, WAYS, queries, device)

    def step():
        idx = sampler.sample(TASKS, gen).to(device)
        support, query = split_episodes(images[idx], shots)
        episodes = metareg.EpisodeBatch(support, support_labels, query, query_labels, WAYS)
        with amp:
            out = strategy.loss(episodes)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    rate = timed(step, seconds, sync)
    return {"config": f"{WAYS}w{shots}s{queries}q x{TASKS} tasks" + (", 1 inner step" if "maml" in mode else "")
            + f", {backbone_name.replace('_', '-')}",
            "steps_per_s": round(rate, 4), "episodes_per_s": round(rate * TASKS, 3)}


def run_l2l(mode: str, x, y, device: str, seconds: float) -> dict:
    spec = importlib.util.spec_from_file_location("learn2learn_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    try:
        import learn2learn  # noqa: F401
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"error": f"learn2learn is not importable ({type(e).__name__}: {e}); install it to compare"}
    ref.KNOBS["tasks"] = TASKS
    raw = []

    def ref_timed(step, secs, sync):  # one warm-up step (l2l-maml is slow); keep the unrounded rate
        raw.append(timed(step, secs, sync, warmup=1, min_steps=1))
        return raw[-1]

    ref.timed = ref_timed
    r = ref.run(mode, x, y, device, seconds)
    per_step = TASKS if "meta_iters_per_s" in r else 1
    return {"config": r["config"], "steps_per_s": round(raw[-1], 4), "episodes_per_s": round(raw[-1] * per_step, 3)}


def worker(mode: str, device: str, seconds: float, bf16: bool, channels_last: bool | None) -> dict:
    import torch

    torch.manual_seed(0)
    xs, ys = omniglot(ZIP)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    before = peak_memory(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        if mode in REFERENCE_MODES:
            r = run_l2l(REFERENCE_MODES[mode], x, y, device, seconds)
        elif mode in L2L_MODES:
            r = run_l2l(mode, x, y, device, seconds)
        else:
            r = run_metareg(mode, x, y, device, seconds, bf16, channels_last)
    except Exception as e:  # noqa: BLE001 - one failing mode must not hide the others
        r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if PROFILED and "steps_per_s" in r:
        per_step = r.get("episodes_per_s", r.get("images_per_s", 0)) / r["steps_per_s"]
        p = PROFILED[-1]
        r["conv_share"] = round(p["conv_s_per_step"] / p["profiled_s_per_step"], 3)
        if "episodes_per_s" in r:
            r["conv_ms_per_episode"] = round(1000 * p["conv_s_per_step"] / per_step, 2)
    r.update(peak_memory(device))
    if device == "cpu":
        r["rss_before_mib"] = before["peak_rss_mib"]
    return {"mode": mode, "device": device, **r}


# ------------------------------------------------------------------ driver
def ratio(a: dict, b: dict, key: str) -> float | None:
    if key in a and key in b and b[key]:
        return a[key] / b[key]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode (after warm-up)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=DEFAULT_MODES + list(REFERENCE_MODES))
    ap.add_argument("--bf16", action="store_true", help="metareg modes under bf16 autocast")
    ap.add_argument("--data", type=Path, default=None, help="Omniglot images_background.zip")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="metareg modes with channels_last model and images, or not; default: each strategy's "
                         "choice, as `metareg run` makes it")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads in every mode (0: torch's default)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="CPU only: profile N extra steps per mode and report the share of time in convolutions")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the modes this many times in turn and report the median ratio (noisy hosts)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global ZIP
    if a.data:
        ZIP = a.data
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    global PROFILE_STEPS
    PROFILE_STEPS = a.profile if a.device == "cpu" else 0
    if a.worker:
        print(json.dumps(worker(a.worker, a.device, a.seconds, a.bf16, a.channels_last)), flush=True)
        return

    import torch

    device_name = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or platform.machine()
    print(f"# bench_strategies: device={a.device} ({device_name}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"{a.seconds:.0f} s per mode, bf16={a.bf16}, "
          f"channels_last={'per strategy' if a.channels_last is None else a.channels_last}", flush=True)
    t0 = time.perf_counter()
    omniglot(ZIP)  # decode once, before any timing
    print(f"# data ready ({time.perf_counter() - t0:.1f} s)", flush=True)
    rounds = []  # one {mode: result} per round; the modes alternate within a round
    for _ in range(a.rounds):
        results = {}
        for mode in a.modes:
            results[mode] = run_mode(mode, a)
            print(json.dumps(results[mode]), flush=True)
        rounds.append(results)

    print("\n| round | mode | config | steps/s | episodes/s | peak memory (MiB) | CPU steal (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, results in enumerate(rounds, 1):
        for mode, r in results.items():
            mem = r.get("peak_cuda_mib", r.get("peak_rss_mib", ""))
            steal = r.get("cpu_steal_s", "")
            if "error" in r:
                print(f"| {n} | {mode} | error: {r['error']} | | | {mem} | {steal} |")
            else:
                eps = r.get("episodes_per_s", r.get("images_per_s", ""))
                print(f"| {n} | {mode} | {r['config']} | {r['steps_per_s']} | {eps} | {mem} | {steal} |")
    target = {"cpu": (2.5, 3.0), "cuda": (15.0, 10.0)}[a.device]
    print()
    for ours, theirs, key, goal, what in (
        ("metareg-maml", "l2l-maml", "steps_per_s", target[0], "MAML steps/s"),
        ("metareg-protonet", "l2l-protonet", "episodes_per_s", target[1], "ProtoNet episodes/s"),
    ):
        if ours not in a.modes or theirs not in a.modes:
            continue
        ratios = [ratio(results[ours], results[theirs], key) for results in rounds]
        if None in ratios:
            results = rounds[ratios.index(None)]
            print(f"{what}: no ratio ({results[theirs].get('error') or results[ours].get('error')})")
            continue
        r = statistics.median(ratios)
        verdict = "meets" if r >= goal else "MISSES"
        each = f" (rounds: {', '.join(f'{x:.2f}x' for x in ratios)})" if len(ratios) > 1 else ""
        print(f"{what}: metareg / learn2learn = {r:.2f}x{' median' if each else ''}{each}  "
              f"(target >= {goal}x on {a.device}: {verdict})")
        for results in rounds:
            ours_conv, theirs_conv = (results[m].get("conv_ms_per_episode") for m in (ours, theirs))
            if ours_conv and theirs_conv:
                ceiling = 1000 / results[theirs]["episodes_per_s"] / ours_conv
                print(f"  convolutions alone: metareg {ours_conv} ms/episode, learn2learn {theirs_conv} ms/episode; "
                      f"a loop doing nothing but metareg's convolutions would reach at most {ceiling:.2f}x "
                      "learn2learn")


def run_mode(mode: str, a: argparse.Namespace) -> dict:
    """One mode in a fresh process; adds the CPU time stolen by the host meanwhile."""
    cmd = [sys.executable, __file__, "--worker", mode, "--device", a.device, "--seconds", str(a.seconds)]
    if a.data:
        cmd += ["--data", str(a.data)]
    if a.bf16:
        cmd.append("--bf16")
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.channels_last is not None:
        cmd.append("--channels-last" if a.channels_last else "--no-channels-last")
    if PROFILE_STEPS:
        cmd += ["--profile", str(PROFILE_STEPS)]
    stolen = stolen_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    stolen = None if stolen is None else stolen_seconds() - stolen
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        result = {"mode": mode, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    if stolen is not None:
        result["cpu_steal_s"] = round(stolen, 1)
    return result

if __name__ == "__main__":
    main()
