"""Meta-training speed of metareg's strategies against learn2learn's own loops, paired in one process.

Conv-4 (64 filters) on real Omniglot at 28x28 (strokes = 1), the setting of learn2learn's
maml_omniglot example. Each metareg loop runs the same network as the loop it is compared with:
MAML and ANIL use ``conv4-omniglot`` (learn2learn's OmniglotCNN), the other strategies ``conv4``
(learn2learn's CNN4Backbone). Every step includes episode sampling, as learn2learn's loops do.
Both loops of a comparison are built in this process, warmed, then timed in alternating single
turns (bench/paired.py): the line printed is the median of the per-pair ratios with its
bootstrap 95 % interval, the absolute rates beside it.

  maml            metareg MAML 5w1s1q x TASKS tasks, 1 inner step, second order  vs  learn2learn's
                  MAML clone/adapt loop, same work (shared/bench/learn2learn_reference.py): steps/s
  protonet        metareg ProtoNet 5w5s15q x TASKS episodes per step  vs  learn2learn Taskset +
                  ProtoNet loss, one episode per step: episodes/s
  maml-ref, protonet-ref   the same metareg loops against the reference file's plain-tensor loops
  anil, metaoptnet-svm, metaoptnet-ridge   against l2l-maml / l2l-protonet (same episodes)
  default         supervised batches of TASKS x 20 images against l2l-protonet, in images/s
  maml-compile, protonet-compile   metareg with the step compiled (torch.compile) vs eager

Targets (issue 16): on CPU MAML >= 2.5x learn2learn, ProtoNet >= 1.0x (goal 1.3x); on a GPU
MAML >= 15x, ProtoNet >= 10x.

Usage:  python bench/bench_strategies.py [--compare maml protonet ...] [--pairs 20] [--seconds 60]
        [--device cpu|cuda] [--tasks 32] [--bf16] [--channels-last/--no-channels-last] [--compile]
        [--episodes-per-forward N] [--profile N] [--data images_background.zip] [--threads N]
The first run decodes the Omniglot zip (about half a minute) into .cache/bench/omniglot28.npz;
``--synthetic`` uses random images of the same shape instead (the dry run of bench/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import platform
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("METAREG_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "bench" / "learn2learn_reference.py"
ZIP = SHARED / "data" / "omniglot" / "images_background.zip"
CACHE = ROOT / ".cache" / "bench" / "omniglot28.npz"

WAYS = 5
METAREG_LOOPS = {
    # name: (strategy factory, options, shots, queries, backbone factory)
    "metareg-maml": ("metareg_strategies.maml:MAML", {"adaptation_steps": 1, "adaptation_lr": 0.4}, 1, 1,
                     "conv4_omniglot"),
    "metareg-protonet": ("metareg_strategies.protonet:PrototypicalNetworks", {}, 5, 15, "conv4"),
    # the whole meta-batch in one backbone pass (episodes_per_forward set to --tasks below)
    "metareg-protonet-whole": ("metareg_strategies.protonet:PrototypicalNetworks", {}, 5, 15, "conv4"),
    "metareg-anil": ("metareg_strategies.anil:ANIL", {"adaptation_steps": 1}, 1, 1, "conv4_omniglot"),
    "metareg-metaoptnet-svm": ("metareg_strategies.metaoptnet:MetaOptNet", {"base_learner": "svm"}, 5, 15, "conv4"),
    "metareg-metaoptnet-ridge": ("metareg_strategies.metaoptnet:MetaOptNet", {"base_learner": "ridge"}, 5, 15,
                                 "conv4"),
    "metareg-default": ("metareg_strategies.supervised:Supervised", {}, 5, 15, "conv4"),
}
# comparison: (metareg loop, reference loop, unit, what, reference's name in the line, compile the first)
COMPARISONS = {
    "maml": ("metareg-maml", "l2l-maml", "steps", "MAML steps/s", "learn2learn", False),
    "protonet": ("metareg-protonet", "l2l-protonet", "episodes", "ProtoNet episodes/s", "learn2learn", False),
    "maml-ref": ("metareg-maml", "vmap-maml", "steps", "MAML steps/s", "plain torch.func", False),
    "protonet-ref": ("metareg-protonet", "batched-protonet", "episodes", "ProtoNet episodes/s", "plain tensors",
                     False),
    "anil": ("metareg-anil", "l2l-maml", "steps", "ANIL steps/s", "learn2learn MAML", False),
    "metaoptnet-svm": ("metareg-metaoptnet-svm", "l2l-protonet", "episodes", "MetaOptNet-SVM episodes/s",
                       "learn2learn ProtoNet", False),
    "metaoptnet-ridge": ("metareg-metaoptnet-ridge", "l2l-protonet", "episodes", "MetaOptNet-ridge episodes/s",
                         "learn2learn ProtoNet", False),
    "default": ("metareg-default", "l2l-protonet", "images", "Supervised images/s", "learn2learn ProtoNet", False),
    "protonet-whole": ("metareg-protonet", "metareg-protonet-whole", "episodes", "ProtoNet episodes/s",
                       "one pass", False),
    "maml-compile": ("metareg-maml", "metareg-maml", "steps", "MAML steps/s", "eager", True),
    "protonet-compile": ("metareg-protonet", "metareg-protonet", "episodes", "ProtoNet episodes/s", "eager", True),
}
TARGETS = {"cpu": {"maml": 2.5, "protonet": 1.0}, "cuda": {"maml": 15.0, "protonet": 10.0}}


# ------------------------------------------------------------------ data
def omniglot(zip_path: Path, size: int = 28):
    """(x (N,1,S,S) float32 in [0,1], strokes = 1; y (N,) int64), cached as npz."""
    import numpy as np

    if CACHE.is_file():
        z = np.load(CACHE)
        return z["x"], z["y"]
    if not zip_path.is_file():
        raise SystemExit(f"Omniglot not found at {zip_path}; pass --data, set METAREG_SHARED or use --synthetic")
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
    tmp = CACHE.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, CACHE)
    return x, y


def synthetic(classes: int = 100, per_class: int = 20, size: int = 28):
    """Random images shaped like Omniglot's (learn2learn's OmniglotCNN takes 28 px only): dry runs without data."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((classes * per_class, 1, size, size), dtype=np.float32)
    return x, np.repeat(np.arange(classes), per_class)


# ------------------------------------------------------------------ loops
def metareg_loop(name: str, x, y, a: argparse.Namespace):
    """(step, units per step by unit name) of one metareg strategy, training, with sampling in the step."""
    import torch
    from metareg_backbones import conv

    import metareg
    from metareg.episodes import episode_labels, split_episodes

    factory_ref, options, shots, queries, backbone_name = METAREG_LOOPS[name]
    module, attr = factory_ref.split(":")
    factory = getattr(importlib.import_module(module), attr)
    torch.manual_seed(0)
    size = x.shape[-1]
    backbone = getattr(conv, backbone_name)(channels=1, image_size=size)
    classes = [f"c{i}" for i in range(int(y.max()) + 1)]
    task = metareg.TaskInfo(ways=WAYS, shots=shots, queries=queries, test_ways=WAYS, test_shots=shots,
                            test_queries=queries, num_train_classes=len(classes), channels=1, image_size=size,
                            feature_dim=backbone.out_features)
    strategy = factory(**options)
    if name.endswith("-whole"):
        strategy.episodes_per_forward = a.tasks
    elif a.episodes_per_forward and hasattr(strategy, "episodes_per_forward"):
        strategy.episodes_per_forward = a.episodes_per_forward
    strategy.setup(backbone, task)
    strategy.to(a.device).train()
    images = x.to(a.device)
    channels_last = strategy.channels_last if a.channels_last is None else a.channels_last
    if channels_last:  # as `metareg run` decides when --channels-last is not given
        strategy.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in strategy.parameters() if p.requires_grad], 1e-3)
    labels_all = y.to(a.device)
    gen = torch.Generator().manual_seed(0)
    amp = torch.autocast(a.device, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()
    compiled = getattr(a, "compile_now", False)
    loss = torch.compile(strategy.loss) if compiled else strategy.loss
    labelled = torch.compile(strategy.labelled_loss) if compiled and strategy.train_batches == "labelled" \
        else strategy.labelled_loss
    tasks = a.tasks

    if strategy.train_batches == "labelled":
        batch = tasks * (shots + queries)

        def step():
            idx = torch.randint(0, len(images), (batch,), generator=gen).to(a.device)
            with amp:
                out = labelled(images[idx], labels_all[idx])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step, {"steps": 1, "images": batch}

    sampler = metareg.EpisodeSampler(y, classes, ways=WAYS, shots=shots, queries=queries, split="train")
    support_labels = episode_labels(tasks, WAYS, shots, a.device)
    query_labels = episode_labels(tasks, WAYS, queries, a.device)

    def step():
        idx = sampler.sample(tasks, gen).to(a.device)
        support, query = split_episodes(images[idx], shots)
        episodes = metareg.EpisodeBatch(support, support_labels, query, query_labels, WAYS)
        with amp:
            out = loss(episodes)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step, {"steps": 1, "episodes": tasks, "images": tasks * WAYS * (shots + queries)}


def reference_loop(mode: str, x, y, a: argparse.Namespace):
    """(step, units) of a loop of shared/bench/learn2learn_reference.py, built by its own code."""
    spec = importlib.util.spec_from_file_location("learn2learn_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    if mode.startswith("l2l-"):
        import learn2learn  # noqa: F401 - a missing learn2learn is one clear error line, below
    ref.KNOBS.update(tasks=a.tasks, bf16=a.bf16 and mode == "batched-protonet",
                     channels_last=bool(a.channels_last) and mode == "batched-protonet")
    steps = []
    ref.timed = lambda step, seconds, sync: steps.append(step) or 1.0  # take the step instead of timing it
    ref.run(mode, x, y, a.device, 0)
    if mode.endswith("maml"):
        return steps[0], {"steps": 1, "episodes": a.tasks}
    per_step = a.tasks if mode == "batched-protonet" else 1
    return steps[0], {"steps": per_step, "episodes": per_step, "images": per_step * WAYS * 20}


def build(name: str, x, y, a: argparse.Namespace, compiled: bool = False):
    if name in METAREG_LOOPS:
        return metareg_loop(name, x, y, argparse.Namespace(**{**vars(a), "compile_now": compiled}))
    return reference_loop(name, x, y, a)


# ------------------------------------------------------------------ profile
def profile(step, steps: int, label: str, top: int = 12) -> None:
    """The ops that bound a loop: self CPU time per step, top ``top`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    print(f"# profile {label}: {total / 1e3 / steps:.0f} ms of op time per step; top ops by self CPU time")
    for e in events[:top]:
        ms, share = e.self_cpu_time_total / 1e3 / steps, 100 * e.self_cpu_time_total / total
        print(f"#   {e.key:<42} {ms:9.1f} ms/step {share:5.1f} %  x{e.count // steps}")


# ------------------------------------------------------------------ driver
def label(a: argparse.Namespace) -> str:
    """What sets this run apart from the default one (32 per step, fp32), for the summary lines."""
    parts = [f"{a.tasks} per step"] if a.tasks != 32 else []
    parts += ["bf16"] if a.bf16 else []
    parts += ["channels-last"] if a.channels_last else []
    parts += ["compiled"] if a.compile else []
    return f" ({', '.join(parts)})" if parts else ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare", nargs="+", default=["maml", "protonet"], choices=list(COMPARISONS))
    ap.add_argument("--pairs", type=int, default=20, help="timed pairs per comparison (at most, with --seconds)")
    ap.add_argument("--seconds", type=float, default=None, help="stop a comparison after this long (>= 5 pairs)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each loop before pairing")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tasks", type=int, default=32, help="episodes per step of the batched loops")
    ap.add_argument("--bf16", action="store_true",
                    help="metareg loops (and plain batched ProtoNet) under bf16 autocast")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="metareg loops in channels_last, or not; default: each strategy's choice, as `metareg run`")
    ap.add_argument("--compile", action="store_true",
                    help="metareg's step compiled (torch.compile) in every comparison")
    ap.add_argument("--episodes-per-forward", type=int, default=0,
                    help="ProtoNet: episodes per backbone pass (0: the strategy's automatic choice)")
    ap.add_argument("--data", type=Path, default=None, help="Omniglot images_background.zip")
    ap.add_argument("--synthetic", action="store_true", help="random Omniglot-shaped images (no data needed)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="after timing, profile N steps of each loop")
    ap.add_argument("--profile-top", type=int, default=12, metavar="K", help="ops listed per profile")
    ap.add_argument("--json", action="store_true", help="also print each comparison as one JSON line")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    device_name = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or platform.machine()
    print(f"# bench_strategies: device={a.device} ({device_name}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"tasks={a.tasks}, bf16={a.bf16}, compile={a.compile}, "
          f"channels_last={'per strategy' if a.channels_last is None else a.channels_last}", flush=True)
    xs, ys = synthetic() if a.synthetic else omniglot(a.data or ZIP)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    for key in a.compare:
        ours, theirs, unit, what, their_name, compile_ours = COMPARISONS[key]
        compile_ours = compile_ours or a.compile
        what = what + label(a)
        try:
            step_a, units_a = build(ours, x, y, a, compiled=compile_ours)
            step_b, units_b = build(theirs, x, y, a, compiled=False)
            if a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result = paired(Side("metareg" + (" compiled" if compile_ours and key.endswith("compile") else ""),
                                 step_a, units_a[unit]), Side(their_name, step_b, units_b[unit]),
                            pairs=a.pairs, seconds=a.seconds, warmup=a.warmup, sync=sync)
        except Exception as e:  # noqa: BLE001 - one failing comparison must not hide the others
            print(f"{what}: no ratio ({key}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})",
                  flush=True)
            continue
        goal = TARGETS[a.device].get(key)
        verdict = ""
        if goal:
            verdict = f"  (target >= {goal}x on {a.device}: {'meets' if result.ratio >= goal else 'MISSES'})"
        memory = ""
        if a.device == "cuda":
            memory = f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
        print(result.summary(what, f"{unit}/s") + verdict + memory,
              flush=True)
        if a.json:
            print(json.dumps({"comparison": key, "what": what, **result.as_dict()}), flush=True)
        if a.profile:
            profile(step_a, a.profile, f"{key}: {ours}", a.profile_top)
            profile(step_b, a.profile, f"{key}: {theirs}", a.profile_top)


if __name__ == "__main__":
    main()
