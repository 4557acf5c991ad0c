"""Throughput of `metareg serve`: requests/s from concurrent HTTP clients, against the model's own cost.

    python bench/bench_serve.py [--clients 1 4 16] [--requests 200] [--images 1] [--hidden 64] [--classes 5]
                                [--pairs 10]

A conv4 prototypical network (untrained: speed does not depend on the weights) saved as a
``.fewshot`` file with ``--classes`` classes of 5 support images (28x28 grey, from 105px PNG
files), served by a real ``metareg serve`` process on a free port. For each client count, that
many threads each with its own ``httpx.Client`` send ``--requests`` requests in all, each
``POST /predict`` with ``--images`` PNG files. Printed: requests/s and images/s over the wall
time, median and 90th-percentile latency, and, as the reference, images/s of
``FewShotClassifier.predict`` in this process on the same files (decode + predict, no HTTP).

What the service costs over the model is measured paired and interleaved (bench/paired.py): one
request of ``--images`` files to the server, then ``predict`` of the same files in this process,
alternating, one client; the line is the median of per-pair ratios with a bootstrap 95 % interval:

    Serve images/s, 1 client: HTTP / in-process predict = 0.80x [95% CI ...] (...; 10 pairs)

The table of client counts has no reference run beside it (its rows are throughput under
concurrency, each over its own wall time), so its rows move with the host's load.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

import metareg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import make_checkpoint, make_images  # noqa: E402
from paired import Side, paired  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, files: list[Path], clients: int, requests: int, per_request: int) -> tuple[float, list[float]]:
    payloads = [[("images", (f.name, f.read_bytes(), "image/png")) for f in files[i:i + per_request]]
                for i in range(0, len(files) - per_request + 1, per_request)]
    latencies: list[float] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                r = c.post(url + "/predict", files=payloads[i % len(payloads)])
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, sorted(latencies)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--images", type=int, default=1, help="images per request")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=10, help="timed pairs of the paired HTTP / in-process line")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "m.ckpt", "prototypicalnetworks", 1, 28, args.hidden, 5, 5)
        support, query = make_images(tmp, args.classes, 5, 64, 1, 105)
        model = tmp / "m.fewshot"
        clf = metareg.FewShotClassifier.from_checkpoint(ckpt).fit(support)
        clf.save(model)
        files = sorted(query.iterdir())
        clf.predict(files[:8])  # warm-up
        start = time.perf_counter()
        clf.predict(files)
        reference = len(files) / (time.perf_counter() - start)

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(Path(sys.executable).parent / "metareg"), "serve", str(model), "--port",
                                   str(port)], stderr=subprocess.PIPE, text=True)
        try:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"metareg serve exited: {server.stderr.read()}")
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            _load(url, files, 1, 10, args.images)  # warm-up
            request = [("images", (f.name, f.read_bytes(), "image/png")) for f in files[:args.images]]
            with httpx.Client(timeout=120) as client:
                def http():
                    client.post(url + "/predict", files=request).raise_for_status()

                r = paired(Side("HTTP", http, args.images),
                           Side("in-process predict", lambda: clf.predict(files[:args.images]), args.images),
                           pairs=args.pairs)
            print(f"conv4 (hidden {args.hidden}) prototypical network, {args.classes} classes, {args.images} "
                  f"image(s) per request, {args.requests} requests per row, torch threads {torch.get_num_threads()}")
            print(f"reference: FewShotClassifier.predict in-process, {len(files)} files: {reference:.0f} images/s")
            print(r.summary("Serve images/s, 1 client", "images/s"), flush=True)
            print(f"{'clients':>8} {'requests/s':>11} {'images/s':>9} {'median ms':>10} {'p90 ms':>8}")
            for clients in args.clients:
                wall, lat = _load(url, files, clients, args.requests, args.images)
                print(f"{clients:>8} {args.requests / wall:>11.1f} {args.requests * args.images / wall:>9.1f} "
                      f"{1000 * lat[len(lat) // 2]:>10.1f} {1000 * lat[int(len(lat) * 0.9)]:>8.1f}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
