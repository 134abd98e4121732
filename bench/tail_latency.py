"""Tail latency at load: what each garbage-collection policy and each kind of periodic work does
to ferry's p99 (issue 17).

Every scenario is a fresh `ferry serve` (with `--loop-lag-probe`) on the benchmark MLP under wrk,
KServe v2 JSON, concurrency 64; the scenarios run in interleaved rounds so that each is compared
with a baseline measured minutes, not hours, apart on this drifting machine:

- `python`: CPython's default collector (`--gc-policy python`), the behaviour before issue 17;
- `server`: ferry's policy (`--gc-policy server`), the baseline of the rows below;
- `again`: the `server` scenario once more, so its ratio to `server` is this machine's noise:
  a scenario's ratio means something only where it is outside that one's spread;
- `scrape`: a Prometheus-style scrape of :8002/metrics every second during the load;
- `poll`: `--model-control-mode poll --repository-poll-secs 1`, repository rescans during the load;
- `drift`: online drift on (a reference.npz and `--drift-window 1000`: a window every ~0.1 s),
  evaluated in the drift evaluator process (the default);
- `drift_thread`: the same, evaluated on a thread of the server (`--drift-evaluator thread`);
- `drift_sampled`: `drift` with `--drift-sample-rate 0.1` (every tenth request monitored);
- `reload`: poll mode, and a new model version published mid-run (load, swap, retire).

Prints p50/p90/p99/p99.9, the loop stalls the probe saw, and each scenario's p99 against the
baseline's in the same round.

    PYTHONPATH=. .venv/bin/python -m bench.tail_latency --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import MLP_FEATURES, build_repository
from bench.serving import ARTIFACTS, loop_lag_counts, serve, stalls, write_payloads, wrk

SCENARIOS = (
    "python",
    "server",
    "again",
    "scrape",
    "poll",
    "drift",
    "drift_thread",
    "drift_sampled",
    "reload",
)
DRIFT_SCENARIOS = ("drift", "drift_thread", "drift_sampled")


def scenario_repository(base: Path, scenario: str, workdir: Path) -> Path:
    """A copy of the benchmark MLP (with a drift reference for `drift`)."""
    repo = workdir / f"repo-{scenario}"
    shutil.copytree(base / "mlp", repo / "mlp")
    for sidecar in (repo / "mlp").glob("*/reference.npz"):
        sidecar.unlink()
    if scenario in DRIFT_SCENARIOS:
        data = workdir / "reference-data.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.standard_normal((2000, MLP_FEATURES)).astype(np.float32))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ferry",
                "drift",
                "reference",
                "mlp",
                "--model-repository",
                str(repo),
                "--data",
                str(data),
            ],
            check=True,
            capture_output=True,
        )
    return repo


def serve_flags(scenario: str) -> list[str]:
    flags = ["--loop-lag-probe", "--gc-policy", "python" if scenario == "python" else "server"]
    if scenario in ("poll", "reload"):
        flags += ["--model-control-mode", "poll", "--repository-poll-secs", "1"]
    if scenario not in DRIFT_SCENARIOS:
        flags.append("--no-drift")
    if scenario == "drift_thread":
        flags += ["--drift-evaluator", "thread"]
    if scenario == "drift_sampled":
        flags += ["--drift-sample-rate", "0.1"]
    return flags


def background(scenario: str, repo: Path, metrics_url: str, seconds: float) -> threading.Thread:
    """The periodic work of a scenario, running beside the load."""

    def scrape() -> None:
        deadline = time.monotonic() + seconds + 2
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://{metrics_url}/metrics") as response:
                response.read()
            time.sleep(1.0)

    def reload() -> None:
        time.sleep(seconds / 2)  # warm-up is 1 s, so this is mid-run
        latest = max(int(p.name) for p in (repo / "mlp").iterdir() if p.name.isdigit())
        staging = repo / f".mlp-{latest + 1}"
        shutil.copytree(repo / "mlp" / str(latest), staging)
        staging.rename(repo / "mlp" / str(latest + 1))

    target = {"scrape": scrape, "reload": reload}.get(scenario)
    thread = threading.Thread(target=target or (lambda: None), daemon=True)
    thread.start()
    return thread


def drift_series(metrics_url: str, name: str) -> float:
    """The benchmark model's value of one drift series (0 when absent)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + '{model="mlp"'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def measure(
    scenario: str, base: Path, workdir: Path, payloads: dict[str, Path], seconds: float
) -> dict[str, Any]:
    repo = scenario_repository(base, scenario, workdir)
    process, http_url, _, metrics_url = serve(repo, serve_flags(scenario))
    try:
        lag_before = loop_lag_counts(metrics_url)
        worker = background(scenario, repo, metrics_url, seconds)
        result = wrk(
            f"http://{http_url}/v2/models/mlp/infer", payloads["http-json"], 64, seconds, {}
        )
        result.update(stalls(lag_before, loop_lag_counts(metrics_url)))
        worker.join()
        if scenario in DRIFT_SCENARIOS:  # the evaluation kept up: windows, few rows dropped
            time.sleep(1.0)  # the last feeder pass
            result["drift_windows"] = drift_series(metrics_url, "ferry_drift_windows_total")
            result["drift_dropped_rows"] = drift_series(
                metrics_url, "ferry_drift_dropped_rows_total"
            )
        return result
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    ARTIFACTS.mkdir(exist_ok=True)
    base = ARTIFACTS / "repository"
    build_repository(base)
    payload_dir = ARTIFACTS / "payloads"
    payload_dir.mkdir(exist_ok=True)
    payloads = write_payloads("mlp", payload_dir)
    scenarios = args.scenarios.split(",")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    with tempfile.TemporaryDirectory(prefix="ferry-tail-") as folder:
        for round_index in range(args.rounds):
            for scenario in scenarios:
                result = measure(scenario, base, Path(folder), payloads, args.seconds)
                results[scenario].append(result)
                print(
                    f"round {round_index + 1} {scenario:12s} {result['req_per_s']:8.0f} req/s  "
                    f"p50 {result['p50_ms']:6.2f}  p90 {result['p90_ms']:6.2f}  "
                    f"p99 {result['p99_ms']:6.2f}  p99.9 {result['p999_ms']:6.2f} ms  "
                    f"stalls: {result['loop_gaps_over_10ms']:.0f} over 10 ms, longest <= "
                    f"{result['longest_loop_gap_le_ms']:.0f} ms"
                    + (
                        f"  drift: {result['drift_windows']:.0f} windows, "
                        f"{result['drift_dropped_rows']:.0f} rows dropped"
                        if "drift_windows" in result
                        else ""
                    ),
                    flush=True,
                )
    print("\n=== p99 against the `server` baseline of the same round ===")
    for scenario in scenarios:
        if scenario == "server" or "server" not in results:
            continue
        ratios = [
            run["p99_ms"] / baseline["p99_ms"]
            for run, baseline in zip(results[scenario], results["server"], strict=True)
        ]
        throughput = [
            run["req_per_s"] / baseline["req_per_s"]
            for run, baseline in zip(results[scenario], results["server"], strict=True)
        ]
        print(
            f"  {scenario:12s} p99 {', '.join(f'{r:.2f}' for r in ratios)} x baseline; "
            f"req/s {', '.join(f'{r:.2f}' for r in throughput)} x baseline"
        )
    for scenario in scenarios:
        p99 = [run["p99_ms"] / run["p50_ms"] for run in results[scenario]]
        print(f"  {scenario:12s} p99 / own p50: {', '.join(f'{r:.2f}' for r in p99)}")
    (ARTIFACTS / "tail_latency.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
