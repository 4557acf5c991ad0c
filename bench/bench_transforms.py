"""Throughput of the Flash meta-learning chain: whole batches on the device vs one image at a time.

    python bench/bench_transforms.py [--batch 100] [--size 84] [--pairs 10] [--devices cpu,cuda]

Flash's example applied its Kornia chain per sample (``post_tensor_transform``, in
the DataLoader). metareg applies the same chain to the whole batch on the device
after transfer. In one run this prints images/s for:

* ``batch``: metareg's ``flash`` transform on a (batch, 3, size, size) tensor;
* ``per-sample kornia``: the same transform called on each (1, 3, size, size) image;
* ``per-sample torchvision v2``: the closest torchvision.transforms.v2 chain per
  image (v2 has no motion blur; a 3x3 Gaussian blur stands in for it).

Each per-sample loop is timed paired and interleaved with the batched one in one process
(bench/paired.py): median of per-pair ratios, bootstrap 95 % interval, rates beside them.
On a GPU the per-sample reference is Flash's way: the chain on the CPU, one image at a time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from metareg_kornia.chains import flash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import Side, paired  # noqa: E402


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=84)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"# bench_transforms: flash chain, p={args.p}, images {args.batch}x3x{args.size}x{args.size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"# {device}: not available, skipped")
            continue
        compare_on(device, args)


def compare_on(device: str, args: argparse.Namespace) -> None:
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    transform = flash(channels=3, image_size=args.size, p=args.p).to(device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    # Flash's way: per sample, in the data loader, on the CPU (then the batch is moved)
    cpu_transform = flash(channels=3, image_size=args.size, p=args.p)
    cpu_images = images.cpu()
    references = {"per-sample kornia on CPU (Flash)":
                  lambda: torch.cat([cpu_transform(img[None]) for img in cpu_images]).to(device)}
    if not cuda:
        tv = torchvision_chain(args.p)
        references["per-sample torchvision v2"] = lambda: torch.stack([tv(img) for img in cpu_images])
    for label, ref in references.items():
        r = paired(Side("batch", lambda: transform(images), args.batch), Side("per sample", ref, args.batch),
                   pairs=args.pairs, sync=sync)
        print(r.summary(f"Kornia flash chain images/s, {device} ({name[:28]}), batch vs {label}", "images/s"),
              flush=True)

if __name__ == "__main__":
    main()
