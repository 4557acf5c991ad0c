"""The lines bench/gpu_check.sh must print, and a check that each is there and parses.

    python bench/gpu_check_lines.py LOG --device cuda --tasks 32 128

Prints one line per missing or unreadable figure and exits 1 if there is any; 0 when every
paired ratio (``WHAT: A / B = N.NNx [95% CI L.LL-H.HHx] (A rate unit, B rate unit; P pairs)``)
and every accuracy line is present with finite numbers.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

NUMBER = r"[\d,]+(?:\.\d+)?(?:e[+-]?\d+)?"
RATIO = re.compile(rf" = (\d+\.\d\d)x \[95% CI (\d+\.\d\d)-(\d+\.\d\d)x\] "
                   rf"\(.+? ({NUMBER}) \S+/s, .+? ({NUMBER}) \S+/s; (\d+) pairs\)")
ACCURACY = re.compile(r": (\d+\.\d) ± (\d+\.\d) % \((\d+) test episodes")


def suffix(tasks: int, bf16: bool = False) -> str:
    parts = ([f"{tasks} per step"] if tasks != 32 else []) + (["bf16", "channels-last"] if bf16 else [])
    return f" ({', '.join(parts)})" if parts else ""


def expected(device: str, tasks: list[int]) -> tuple[list[str], list[str]]:
    """(ratio-line prefixes, accuracy protocols) that gpu_check.sh prints with these settings."""
    ratios = []
    for t in tasks:
        ratios += [f"ProtoNet episodes/s{suffix(t)}: metareg / learn2learn",
                   f"ProtoNet episodes/s{suffix(t)}: metareg / plain tensors",
                   f"MAML steps/s{suffix(t)}: metareg / learn2learn",
                   f"MAML steps/s{suffix(t)}: metareg / plain torch.func",
                   f"ProtoNet episodes/s{suffix(t, bf16=True)}: metareg / learn2learn",
                   f"ProtoNet episodes/s{suffix(t, bf16=True)}: metareg / plain tensors"]
    ratios += ["Sampling episodes/s: metareg / learn2learn",
               "Sampling episodes/s, 32 per draw: metareg / learn2learn",
               f"Kornia flash chain images/s, {device} (",
               "Evaluation episodes/s: metareg / forward",
               "Predict queries/s, request without cache (decode + fit + predict): predict / forward",
               "Predict queries/s, request with support cache: predict / forward",
               "Predict queries/s, queries already decoded, after fit: predict / forward"]
    accuracy = [f"{ways}w{shots}s" for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5))]
    return ratios, accuracy


def _finite(*texts: str) -> bool:
    try:
        return all(math.isfinite(float(t.replace(",", ""))) for t in texts)
    except ValueError:
        return False


def problems(text: str, device: str, tasks: list[int]) -> list[str]:
    """What is missing or unreadable in gpu_check.sh's output ``text``; empty when all is there."""
    lines = text.splitlines()
    ratios, accuracy = expected(device, tasks)
    found = []
    for prefix in ratios:
        line = next((ln for ln in lines if ln.startswith(prefix)), None)
        if line is None:
            found.append(f"missing: {prefix} ...")
            continue
        m = RATIO.search(line)
        if not m or not _finite(*m.groups()) or int(m.group(6)) < 1:
            found.append(f"unreadable: {line}")
        elif device == "cuda" and prefix.startswith(("ProtoNet", "MAML")) and "peak GPU memory" not in line:
            found.append(f"no peak GPU memory: {line}")
    for protocol in accuracy:  # "Omniglot ProtoNet 60 s 5w1s: 97.9 ± 0.4 % (600 test episodes; ...)"
        line = next((ln for ln in lines if ln.startswith("Omniglot ProtoNet") and f" {protocol}:" in ln), None)
        if line is None:
            found.append(f"missing: Omniglot ProtoNet ... {protocol}: ...")
        elif not (m := ACCURACY.search(line)) or not _finite(m.group(1), m.group(2)):
            found.append(f"unreadable: {line}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tasks", type=int, nargs="+", default=[32, 128])
    a = ap.parse_args(argv)
    found = problems(a.log.read_text(), a.device, a.tasks)
    for p in found:
        print(f"gpu_check: {p}")
    print(f"gpu_check: {'all figures present' if not found else f'{len(found)} figure(s) missing or unreadable'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
