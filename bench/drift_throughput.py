"""Cost of drift monitoring: `ferry serve` throughput and RSS with drift on vs off, same run.

Runs alternate (off, on, off, on, ...) on one repository (a 64 -> 10 MLP with reference.npz),
each a fixed-duration closed loop of 1-row HTTP requests from client threads.
Run: `.venv/bin/python -m bench.drift_throughput [--seconds 10] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from monitoring.reference import write_reference
from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server


def load(server: ServerProcess, seconds: float, threads: int) -> float:
    """Requests per second over `seconds` from `threads` closed-loop clients."""
    import tritonclient.http as httpclient

    counts = [0] * threads
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        x = np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)
        inp = httpclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        while time.monotonic() < stop:
            client.infer("mlp", [inp])
            counts[i] += 1
        client.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / seconds


def rss_mb(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    return float(match.group(1)) / 2**20 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="ferry-drift-cost-"))
    model_dir = write_model(repo, "mlp", mlp_model(in_features=64, out_features=10))
    write_reference(
        model_dir / "1",
        model_dir / "1" / "model.onnx",
        {"input": np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)},
        window=1000,
    )
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            flags = ["--no-drift"] if mode == "off" else ["--drift-window", "1000"]
            with running_server(repo, *flags) as server:
                load(server, 2.0, args.threads)  # warm-up
                rate = load(server, args.seconds, args.threads)
                results[mode].append((rate, rss_mb(server)))
            print(f"drift {mode}: {rate:.0f} req/s, RSS {results[mode][-1][1]:.1f} MiB")
    off = np.mean([r for r, _ in results["off"]])
    on = np.mean([r for r, _ in results["on"]])
    rss = np.mean([m for _, m in results["on"]]) - np.mean([m for _, m in results["off"]])
    print(
        f"throughput on/off: {on / off:.3f} ({100 * (1 - on / off):+.1f} % drop); "
        f"RSS on - off: {rss:+.1f} MiB (one model version)"
    )


if __name__ == "__main__":
    main()
