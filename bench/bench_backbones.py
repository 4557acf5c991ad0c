"""Forward+backward throughput of the first-party backbones: channels_last and bf16 autocast vs plain fp32.

    python bench/bench_backbones.py [--device cpu|cuda] [--batch 32] [--steps 3] [--rounds 2] [--backbones conv4,wrn28]

Prints images/s (best of --rounds alternating rounds) for each backbone on 84x84x3 (and 28x28x1 for conv4) in four
settings measured in the same run: fp32 contiguous (the reference), fp32
channels_last, bf16 autocast, bf16 autocast + channels_last.
"""
from __future__ import annotations

import argparse
import time

import torch

from metareg.plugins import load_plugins
from metareg.registry import Registry


def measure(model, x, steps: int, channels_last: bool, bf16: bool, device: str) -> float:
    """Images/s of ``steps`` forward+backward passes in one setting (after one warm-up pass)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        model = model.to(memory_format=torch.contiguous_format)
        x = x.contiguous()
    model.train()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backbones", default="conv4,resnet12,resnet18,wrn28")
    args = ap.parse_args()
    registry = Registry(load_plugins())
    torch.manual_seed(0)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch}")
    print(f"{'backbone':<12}{'input':<10}{'fp32':>10}{'fp32+CL':>10}{'bf16':>10}{'bf16+CL':>10}  (images/s)")
    for name in args.backbones.split(","):
        factory = registry.get("backbones", name).record.load()
        shapes = [(3, 84)] + ([(1, 28)] if name.startswith("conv4") else [])
        for c, s in shapes:
            model = factory(channels=c, image_size=s)
            x = torch.rand(args.batch, c, s, s, device=args.device)
            settings = ((False, False), (False, True), (True, False), (True, True))
            # Rounds alternate the settings and keep each one's best, so a burst of load elsewhere
            # on the machine does not land on one setting only.
            rates = [0.0] * len(settings)
            for _ in range(args.rounds):
                for i, (bf16, cl) in enumerate(settings):
                    rates[i] = max(rates[i], measure(model, x, args.steps, cl, bf16, args.device))
            print(f"{name:<12}{f'{c}x{s}x{s}':<10}" + "".join(f"{r:>10.1f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
