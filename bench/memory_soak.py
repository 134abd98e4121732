"""Memory under a long load (issue 17): does RSS stay flat with ferry's garbage-collection policy?

One `ferry serve` (the benchmark MLP, `--gc-policy server` unless `--gc-policy` says otherwise)
under wrk at concurrency 64 for `--minutes`, the load cycling through HTTP JSON, HTTP binary and
gRPC (h2load) in slices of `--slice-seconds`, with a Prometheus-style scrape of :8002 every
second. The server's RSS is read from /proc every `--sample-seconds`. Prints the curve, the growth
after the first minute (warm-up: arenas, caches and the first gc.freeze settle there) and its
slope in MB per minute, and writes bench/artifacts/memory_soak.json.

    PYTHONPATH=. .venv/bin/python -m bench.memory_soak --minutes 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import build_repository
from bench.serving import ARTIFACTS, grpc_load, serve, write_payloads, wrk

WARM_UP_MINUTES = 1.0


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for {pid}")


def sample_rss(
    pid: int, every_s: float, stop: threading.Event, curve: list[tuple[float, float]]
) -> None:
    """Append (seconds since start, RSS MB) to `curve` until `stop` is set."""
    started = time.monotonic()
    while not stop.is_set():
        curve.append((time.monotonic() - started, rss_mb(pid)))
        stop.wait(every_s)


def scrape_every_second(metrics_url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        with urllib.request.urlopen(f"http://{metrics_url}/metrics") as response:
            response.read()
        stop.wait(1.0)


def growth(curve: list[tuple[float, float]]) -> dict[str, float]:
    """RSS growth after the warm-up minute: total MB and the least-squares slope in MB/min."""
    settled = [(t, mb) for t, mb in curve if t >= WARM_UP_MINUTES * 60]
    if len(settled) < 2:
        return {"growth_mb": float("nan"), "slope_mb_per_min": float("nan")}
    times = np.array([t for t, _ in settled]) / 60.0
    sizes = np.array([mb for _, mb in settled])
    slope = float(np.polyfit(times, sizes, 1)[0])
    return {"growth_mb": float(sizes[-1] - sizes[0]), "slope_mb_per_min": slope}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--slice-seconds", type=float, default=20.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--gc-policy", choices=("server", "python"), default="server")
    args = parser.parse_args()
    ARTIFACTS.mkdir(exist_ok=True)
    base = ARTIFACTS / "repository"
    build_repository(base)
    payload_dir = ARTIFACTS / "payloads"
    payload_dir.mkdir(exist_ok=True)
    payloads = write_payloads("mlp", payload_dir)
    workdir = Path(tempfile.mkdtemp(prefix="ferry-soak-"))
    shutil.copytree(base / "mlp", workdir / "mlp")
    process, http_url, grpc_url, metrics_url = serve(
        workdir, ["--gc-policy", args.gc_policy, "--no-drift"]
    )
    curve: list[tuple[float, float]] = []
    slices: list[dict[str, Any]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=sample_rss, args=(process.pid, args.sample_seconds, stop, curve), daemon=True
        ),
        threading.Thread(target=scrape_every_second, args=(metrics_url, stop), daemon=True),
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + args.minutes * 60
        kinds = ("http-json", "http-binary", "grpc")
        index = 0
        while time.monotonic() < deadline:
            kind = kinds[index % len(kinds)]
            seconds = min(args.slice_seconds, max(deadline - time.monotonic(), 1.0))
            if kind == "grpc":
                result = grpc_load(grpc_url, payloads["grpc"], 64, seconds)
            else:
                headers = {}
                if kind == "http-binary":
                    header_length = (payload_dir / "mlp.bin.len").read_text()
                    headers = {"Inference-Header-Content-Length": header_length}
                url = f"http://{http_url}/v2/models/mlp/infer"
                result = wrk(url, payloads[kind], 64, seconds, headers)
            slices.append({"kind": kind, **result})
            index += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        process.terminate()
        process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = growth(curve)
    for seconds, mb in curve:
        print(f"  {seconds / 60:5.1f} min  RSS {mb:7.1f} MB")
    served = sum(s["req_per_s"] for s in slices) / max(len(slices), 1)
    print(
        f"gc policy {args.gc_policy}: {len(slices)} load slices, mean {served:.0f} req/s; "
        f"RSS {curve[0][1]:.1f} -> {curve[-1][1]:.1f} MB; after the first minute "
        f"{summary['growth_mb']:+.1f} MB, slope {summary['slope_mb_per_min']:+.2f} MB/min"
    )
    report = {"gc_policy": args.gc_policy, "curve": curve, "slices": slices, **summary}
    (ARTIFACTS / f"memory_soak_{args.gc_policy}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
