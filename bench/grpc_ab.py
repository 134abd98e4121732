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

from bench.serving import ARTIFACTS, grpc_load, model_stats, serve


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far of a process, or of one of its threads (Linux /proc)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(label: str, spec: str, repository: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """The server `label=TREE[:MODULE]` names: its process, HTTP and gRPC urls."""
    tree, _, module = spec.partition(":")
    return serve(
        repository.resolve(),
        ["--no-drift"],
        source=Path(tree).resolve(),
        log_name=f"ab-{label}.log",
        module=module or "ferry",
    )


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
        results: dict[str, list[tuple[float, float, float, float]]] = {
            label: [] for label in servers
        }
        for round_number in range(args.rounds):
            for label, (process, http_url, grpc_url, _) in servers.items():
                before = model_stats(http_url, args.model)
                cpu_before = cpu_seconds(process.pid)
                loop_before = cpu_seconds(process.pid, process.pid)  # the event loop's thread
                run = grpc_load(grpc_url, payload, args.concurrency, args.seconds)
                cpu = cpu_seconds(process.pid) - cpu_before
                loop_cpu = cpu_seconds(process.pid, process.pid) - loop_before
                after = model_stats(http_url, args.model)
                rows = (after[0] - before[0]) / max(after[1] - before[1], 1)
                # requests per second of the server's own CPU: steadier than req/s on a busy box
                per_cpu = (after[0] - before[0]) / max(cpu, 1e-9)
                loop_us = loop_cpu / max(after[0] - before[0], 1) * 1e6
                results[label].append((run["req_per_s"], run["p50_ms"], rows, per_cpu))
                print(
                    f"round {round_number + 1} {label:>8}: {run['req_per_s']:8.0f} req/s  "
                    f"p50 {run['p50_ms']:.2f} ms  rows/execution {rows:.1f}  "
                    f"{per_cpu:8.0f} req per server CPU-s  event loop {loop_us:.1f} us/req  "
                    f"errors {run['errors']:.0f}",
                    flush=True,
                )
                time.sleep(0.5)
        first = next(iter(results))
        print(f"\nmedians at c={args.concurrency} (ratio to {first}):")
        for label, rows in results.items():
            ratios = []
            for column in (0, 3):  # req/s, req per server CPU-second
                value = statistics.median(r[column] for r in rows)
                ratios.append(value / statistics.median(r[column] for r in results[first]))
            print(
                f"  {label:>8}: {statistics.median(r[0] for r in rows):8.0f} req/s "
                f"(x{ratios[0]:.3f}), {statistics.median(r[3] for r in rows):8.0f} req per "
                f"server CPU-s (x{ratios[1]:.3f}), rows/execution "
                f"{statistics.median(r[2] for r in rows):.1f}"
            )
    finally:
        for process, *_ in servers.values():
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
