"""Same-run A/B of gRPC servers on the bench MLP: each server runs at once on its own ports, and
h2load rounds alternate between them (the machine's noise hits all alike). Prints req/s, p50 and
rows per execution (batch formation) per server and round, and the ratios against the first.

    PYTHONPATH=. python -m bench.grpc_ab --server base=/tmp/ferry-main --server new=.
    PYTHONPATH=. python -m bench.grpc_ab --server ferry=. --server h2=.:bench.h2_transport

A server is `label=TREE[:MODULE]`: `python -m MODULE serve ...` (MODULE defaults to `ferry`) run
from the source tree TREE (another checkout for a before/after). `make bench` first builds
bench/artifacts/repository and the MLP payload.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.serving import ARTIFACTS, grpc_load, model_stats
from tests.support.server_process import ServerProcess, free_port, wait_until_live


def start(label: str, spec: str, repository: Path) -> tuple[ServerProcess, str]:
    tree, _, module = spec.partition(":")
    tree_path = Path(tree).resolve()
    ports = [free_port() for _ in range(3)]
    log = open(ARTIFACTS / f"ab-{label}.log", "wb")  # noqa: SIM115 - lives with the server
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module or "ferry",
            "serve",
            "--model-repository",
            str(repository.resolve()),
            "--no-drift",
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(ports[0]),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(ports[1]),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(ports[2]),
        ],
        cwd=tree_path,
        env=dict(os.environ, PYTHONPATH=str(tree_path)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(process, *ports, Path(log.name))
    wait_until_live(server, ready=True, label=label)
    return server, f"127.0.0.1:{ports[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", action="append", required=True, help="label=TREE[:MODULE]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()
    repository = ARTIFACTS / "repository"
    payload = ARTIFACTS / "payloads" / f"{args.model}.grpc"
    if not payload.is_file():
        sys.exit(f"{payload} is missing: run `make bench` once first")
    servers = {}
    try:
        for spec in args.server:
            label, _, rest = spec.partition("=")
            servers[label] = start(label, rest, repository)
        results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in servers}
        for round_number in range(args.rounds):
            for label, (server, grpc_url) in servers.items():
                before = model_stats(server.http_url, args.model)
                run = grpc_load(grpc_url, payload, args.concurrency, args.seconds)
                after = model_stats(server.http_url, args.model)
                rows = (after[0] - before[0]) / max(after[1] - before[1], 1)
                results[label].append((run["req_per_s"], run["p50_ms"], rows))
                print(
                    f"round {round_number + 1} {label:>8}: {run['req_per_s']:8.0f} req/s  "
                    f"p50 {run['p50_ms']:.2f} ms  rows/execution {rows:.1f}  "
                    f"errors {run['errors']:.0f}",
                    flush=True,
                )
                time.sleep(0.5)
        first = next(iter(results))
        base = statistics.median(r[0] for r in results[first])
        print(f"\nmedian req/s at c={args.concurrency} (ratio to {first}):")
        for label, rows in results.items():
            median = statistics.median(r[0] for r in rows)
            per_round = [round(r[0] / b[0], 3) for r, b in zip(rows, results[first], strict=True)]
            print(
                f"  {label:>8}: {median:8.0f}  x{median / base:.3f}  "
                f"rows/execution {statistics.median(r[2] for r in rows):.1f}  "
                f"per round {per_round}"
            )
    finally:
        for server, _ in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
