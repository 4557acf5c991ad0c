"""Forward+backward throughput of the first-party backbones: channels_last and bf16 autocast vs plain fp32, paired.

    python bench/bench_backbones.py [--device cpu|cuda] [--batch 32] [--pairs 10] [--backbones conv4,wrn28]

For each backbone on 84x84x3 (and 28x28x1 for conv4), the plain fp32 contiguous model is the
reference, timed paired and interleaved in one process (bench/paired.py) against each other
setting in turn: fp32 channels_last, bf16 autocast, bf16 autocast + channels_last. Each side has
its own copy of the model (a memory format is a property of the weights). One line per setting:

    Backbone conv4 3x84x84 images/s: fp32 channels-last / fp32 = 1.48x [95% CI ...] (...; 10 pairs)
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from metareg.plugins import load_plugins
from metareg.registry import Registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402

SETTINGS = {"fp32 channels-last": (False, True), "bf16": (True, False), "bf16 channels-last": (True, True)}


def training_step(model, x, channels_last: bool, bf16: bool, device: str):
    """One forward+backward pass in one setting, on this setting's own copy of the model."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device, memory_format=fmt).train()
    x = x.contiguous(memory_format=fmt)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=10, help="timed pairs per comparison")
    ap.add_argument("--backbones", default="conv4,resnet12,resnet18,wrn28")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.settings.split(",")) - set(SETTINGS))
    if unknown:
        ap.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    registry = Registry(load_plugins())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    print(f"# bench_backbones: device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={args.batch}", flush=True)
    for name in args.backbones.split(","):
        factory = registry.get("backbones", name).record.load()
        shapes = [(3, 84)] + ([(1, 28)] if name.startswith("conv4") else [])
        for c, s in shapes:
            model = factory(channels=c, image_size=s)
            x = torch.rand(args.batch, c, s, s, device=args.device)
            reference = training_step(model, x, False, False, args.device)
            for setting in args.settings.split(","):
                bf16, cl = SETTINGS[setting]
                r = paired(Side(setting, training_step(model, x, cl, bf16, args.device), args.batch),
                           Side("fp32", reference, args.batch), pairs=args.pairs, sync=sync)
                print(r.summary(f"Backbone {name} {c}x{s}x{s} images/s", "images/s"), flush=True)


if __name__ == "__main__":
    main()
