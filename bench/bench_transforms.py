"""Throughput of the Flash meta-learning chain: whole batches on the device vs one image at a time.

    python bench/bench_transforms.py [--batch 100] [--size 84] [--repeats 3] [--devices cpu,cuda]

Flash's example applied its Kornia chain per sample (``post_tensor_transform``, in
the DataLoader). metareg applies the same chain to the whole batch on the device
after transfer. In one run this prints images/s for:

* ``batch``: metareg's ``flash`` transform on a (batch, 3, size, size) tensor;
* ``per-sample kornia``: the same transform called on each (1, 3, size, size) image;
* ``per-sample torchvision v2``: the closest torchvision.transforms.v2 chain per
  image (v2 has no motion blur; a 3x3 Gaussian blur stands in for it).

Each figure is the best of ``--repeats`` timed passes after a warm-up pass.
"""
from __future__ import annotations

import argparse
import time

import torch
from metareg_kornia.chains import flash


def torchvision_chain(p: float):
    from torchvision.transforms import v2

    def maybe(t):
        return v2.RandomApply([t], p=p)

    return v2.Compose([
        v2.RandomHorizontalFlip(p=p),
        maybe(v2.RandomRotation(90.0)),
        maybe(v2.RandomAffine(degrees=5.0, translate=(1 / 20, 1 / 20), shear=1 / 5)),
        v2.RandomPerspective(distortion_scale=1 / 25, p=p),
        maybe(v2.ColorJitter(brightness=1 / 30)),
        maybe(v2.ColorJitter(saturation=1 / 30)),
        maybe(v2.ColorJitter(contrast=1 / 30)),
        maybe(v2.ColorJitter(hue=1 / 30)),
        maybe(v2.GaussianBlur(3)),
        v2.RandomErasing(p=p, scale=(1 / 100, 1 / 50), ratio=(1 / 20, 1.0)),
    ])


def rate(fn, images: torch.Tensor, repeats: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn(images)  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        sync()
        best = min(best, time.perf_counter() - start)
    return images.shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"flash chain, p={args.p}, images {args.batch}x3x{args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: not available, skipped")
            continue
        name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
        transform = flash(channels=3, image_size=args.size, p=args.p).to(device)
        images = torch.rand(args.batch, 3, args.size, args.size, device=device)
        results = {
            "batch (metareg)": rate(transform, images, args.repeats, device),
            "per-sample kornia (Flash)": rate(
                lambda x, t=transform: torch.cat([t(img[None]) for img in x]), images, args.repeats, device
            ),
        }
        if not device.startswith("cuda"):
            tv = torchvision_chain(args.p)
            results["per-sample torchvision v2"] = rate(
                lambda x, t=tv: torch.stack([t(img) for img in x]), images, args.repeats, device
            )
        base = results["batch (metareg)"]
        for label, r in results.items():
            print(f"{device:<6} {name[:28]:<28} {label:<28} {r:>10.1f} images/s  (batch is {base / r:.1f}x)",
                  flush=True)


if __name__ == "__main__":
    main()
