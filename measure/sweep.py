"""`ferry bench --sweep`: Model Analyzer's job for one model on `ferry serve`.

Every candidate serving config (instance_group count x preferred batch size x queue delay) is a
copy of the model's config.pbtxt in a scratch repository whose version folders link to the real
ones; each is served by its own `ferry serve` process on free loopback ports, measured at every
concurrency, and stopped. The report lists the (config, concurrency) points on the
throughput/latency frontier and picks the highest throughput whose p99 meets the budget.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from measure.model_info import BenchError
from measure.profile import BenchOptions, run_bench
from server.repository_format import (
    CONFIG_FILENAME,
    ModelConfig,
    format_config,
    read_config,
    version_numbers,
    write_config,
)

SERVE_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SweepOptions:
    """The search space and the goal."""

    repository: Path
    instance_counts: tuple[int, ...] = (1, 2)
    preferred_batch_sizes: tuple[int | None, ...] | None = None  # None: derived from the model
    queue_delays_us: tuple[int, ...] = (0, 2000)
    latency_budget_ms: float | None = None
    apply: bool = False
    serve_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    label: str
    config: ModelConfig


def candidates(config: ModelConfig, options: SweepOptions) -> list[Candidate]:
    """The configs to try: the product of the three axes (batching axes only if it batches)."""
    batching = config.max_batch_size > 0
    preferred: tuple[int | None, ...] = (None,)
    delays: tuple[int | None, ...] = (None,)
    if batching:
        preferred = options.preferred_batch_sizes or tuple(
            dict.fromkeys((None, max(1, config.max_batch_size // 2)))
        )
        delays = tuple(options.queue_delays_us) or (0,)
    found = []
    for count, size, delay in itertools.product(options.instance_counts, preferred, delays):
        if size is not None and batching and size > config.max_batch_size:
            continue
        candidate = ModelConfig()
        candidate.CopyFrom(config)
        del candidate.instance_group[:]
        group = candidate.instance_group.add()
        group.count = count
        if config.instance_group:
            group.kind = config.instance_group[0].kind
        parts = [f"instances={count}"]
        if batching:
            batcher = candidate.dynamic_batching
            batcher.ClearField("preferred_batch_size")
            if size is not None:
                batcher.preferred_batch_size.append(size)
            batcher.max_queue_delay_microseconds = delay or 0
            parts += [f"preferred={size if size is not None else '-'}", f"delay={delay}us"]
        found.append(Candidate(" ".join(parts), candidate))
    if not found:
        raise BenchError("the sweep has no candidate configs (check the axes' values)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scratch_repository(model_dir: Path, config: ModelConfig, root: Path) -> Path:
    """root/NAME with the candidate's config.pbtxt and links to the real version folders."""
    target = root / model_dir.name
    target.mkdir(parents=True)
    for version in version_numbers(model_dir):
        os.symlink((model_dir / str(version)).resolve(), target / str(version))
    write_config(target, config)
    return root


def serve_command(
    repository: Path, http_port: int, grpc_port: int, metrics_port: int, *extra: str
) -> list[str]:
    """`ferry serve` of `repository` on loopback ports (this Python's ferry)."""
    return [
        sys.executable,
        "-m",
        "ferry",
        "serve",
        "--model-repository",
        str(repository),
        *("--http-address", "127.0.0.1", "--http-port", str(http_port)),
        *("--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port)),
        *("--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port)),
        *extra,
    ]


@contextlib.contextmanager
def served(repository: Path, extra: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """`ferry serve` on free loopback ports for a `with` block: yields (http url, grpc url)."""
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in finally
        prefix="ferry-sweep-", suffix=".log", delete=False
    )
    command = serve_command(repository, http_port, grpc_port, metrics_port, *extra)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, http_port, Path(log.name))
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        os.unlink(log.name)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"ferry serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
            ) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise BenchError(
        f"ferry serve was not ready in {SERVE_START_TIMEOUT_S:.0f}s:\n{log.read_text()}"
    )


def pareto_frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points no other point beats on both throughput (higher) and p99 latency (lower)."""
    frontier = []
    for point in points:
        dominated = any(
            other["throughput_infer_s"] >= point["throughput_infer_s"]
            and other["p99_ms"] <= point["p99_ms"]
            and (
                other["throughput_infer_s"] > point["throughput_infer_s"]
                or other["p99_ms"] < point["p99_ms"]
            )
            for other in points
        )
        if not dominated:
            frontier.append(point)
    return sorted(frontier, key=lambda p: p["throughput_infer_s"])


def pick(points: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any] | None:
    """Highest throughput among error-free points within the p99 budget."""
    eligible = [
        p for p in points if not p["errors"] and (budget_ms is None or p["p99_ms"] <= budget_ms)
    ]
    return max(eligible, key=lambda p: p["throughput_infer_s"]) if eligible else None


def run_sweep(
    bench: BenchOptions, options: SweepOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Serve and measure every candidate; returns the sweep report (and applies the pick)."""
    import asyncio

    model_dir = options.repository / bench.model
    config = read_config(model_dir)
    if config is None:
        raise BenchError(
            f"{model_dir / CONFIG_FILENAME} is missing: the sweep edits a copy of the model's "
            "config.pbtxt (write one, or serve once and save GET /v2/models/NAME/config)"
        )
    if not version_numbers(model_dir):
        raise BenchError(f"{model_dir} has no version folders")
    tried = candidates(config, options)
    points: list[dict[str, Any]] = []
    results = []
    for index, candidate in enumerate(tried, 1):
        progress(f"config {index}/{len(tried)}: {candidate.label}")
        scratch = Path(tempfile.mkdtemp(prefix="ferry-sweep-repo-"))
        try:
            repository = _scratch_repository(model_dir, candidate.config, scratch)
            with served(repository, options.serve_args) as (http_url, grpc_url):
                url = grpc_url if bench.protocol == "grpc" else http_url
                report = asyncio.run(run_bench(replace(bench, url=url)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for level in report["levels"]:
            points.append(
                {
                    "config": candidate.label,
                    "concurrency": level["concurrency"],
                    "throughput_infer_s": level["throughput_infer_s"],
                    "p50_ms": level["latency_ms"]["p50"],
                    "p99_ms": level["latency_ms"]["p99"],
                    "errors": sum(level["errors"].values()),
                    "stable": level["stable"],
                }
            )
        results.append(
            {"config": candidate.label, "config_pbtxt": format_config(candidate.config), **report}
        )
    best = pick(points, options.latency_budget_ms)
    chosen = next((c for c in tried if best and c.label == best["config"]), None)
    applied = None
    if options.apply and chosen is not None:
        applied = str(write_config(model_dir, chosen.config))
    return {
        "model": bench.model,
        "repository": str(options.repository),
        "latency_budget_ms": options.latency_budget_ms,
        "points": points,
        "frontier": pareto_frontier(points),
        "best": None
        if best is None
        else {**best, "config_pbtxt": format_config(chosen.config)}
        if chosen
        else None,
        "applied": applied,
        "candidates": results,
    }
