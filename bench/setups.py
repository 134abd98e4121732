"""Several `ferry serve` set-ups measured in one run: all started up front, then measured in
alternating rounds (this shared machine's speed drifts within minutes), reported as medians and
ratios to the first set-up."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bench.serving import serve

# name -> (source tree to serve from, extra `ferry serve` flags)
Setups = dict[str, tuple[Path, list[str]]]
# (set-up name, HTTP url, gRPC url, server pid) -> figures of one measurement ("http" req/s...)
Measure = Callable[[str, str, str, int], dict[str, float]]


def alternate_rounds(
    repo: Path, setups: Setups, measure: Measure, rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Every set-up's figures, one entry per round; the servers are always stopped."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    servers = {
        name: serve(repo, ["--no-drift", *extra], source, f"serve-{index}.log")
        for index, (name, (source, extra)) in enumerate(setups.items())
    }
    try:
        for round_index in range(rounds):
            for name, (process, http_url, grpc_url, _) in servers.items():
                result = measure(name, http_url, grpc_url, process.pid)
                results[name].append(result)
                print(f"round {round_index + 1} {name:22s} {result}", flush=True)
    finally:
        for process, _, _, _ in servers.values():
            process.terminate()
            process.wait()
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_medians(
    results: dict[str, list[dict[str, float]]],
    concurrency: int,
    keys: tuple[str, ...],
    unit: str = "req/s",
) -> None:
    """Median of each figure per set-up, and its ratio to the first set-up's."""
    first = next(iter(results))
    print(f"\nmedian {unit} at c={concurrency}, ratio to '{first}':")
    for key in keys:
        reference_runs = sorted(r[key] for r in results[first] if key in r)
        reference = reference_runs[len(reference_runs) // 2]
        for name, runs in results.items():
            values = sorted(r[key] for r in runs if key in r)
            if values:
                median = values[len(values) // 2]
                spread = (values[-1] - values[0]) / median
                print(
                    f"  {key:8s} {name:24s} {median:8.1f}  x{median / reference:.3f}"
                    f"  (min-max spread {spread:.0%})"
                )
