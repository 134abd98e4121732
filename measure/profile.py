"""One `ferry bench` run: read the model, build the requests, measure every load level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from measure.inputs import build_inputs
from measure.load import LoadGenerator
from measure.model_info import (
    BenchError,
    GrpcModelSource,
    HttpModelSource,
    ModelInfo,
    ModelSource,
    parse_model,
)
from measure.requests import RequestSet
from measure.shared_memory import SharedMemoryRegions
from measure.windows import (
    STABILITY_WINDOWS,
    is_stable,
    latency_summary,
    server_split,
    stats_totals,
    status_counts,
    success_latencies,
    window,
)


def _grpc_code_names() -> dict[int, str]:
    import grpc

    return {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass(frozen=True)
class BenchOptions:
    """Everything `ferry bench` measures with."""

    model: str
    url: str
    protocol: str = "http"
    binary: bool = True
    model_version: str = ""
    concurrency: tuple[int, ...] = (1,)
    request_rates: tuple[float, ...] = ()
    request_distribution: str = "constant"
    window_s: float = 2.0
    warmup_s: float = 1.0
    stability: float = 0.10
    max_trials: int = 10
    percentile: int | None = None
    input_data: str = "random"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batch_size: int = 1
    sequence_length: int = 20
    shared_memory: str = "none"
    output_shared_memory_bytes: int | None = None


def split_url(url: str, protocol: str) -> tuple[str, int]:
    """HOST:PORT (a scheme is tolerated); the port defaults to 8000 (HTTP) or 8001 (gRPC)."""
    bare = url.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not port.isdigit():
        host, port = bare, "8001" if protocol == "grpc" else "8000"
    return host.strip("[]") or "127.0.0.1", int(port)


def status_label(protocol: str) -> Callable[[int], str]:
    if protocol == "grpc":
        names = _grpc_code_names()
        return lambda code: names.get(code, f"gRPC {code}")
    return lambda status: "connection error" if status == 0 else f"HTTP {status}"


def source_for(protocol: str, host: str, port: int) -> ModelSource:
    if protocol == "grpc":
        return GrpcModelSource(host, port)
    if protocol == "http":
        return HttpModelSource(host, port)
    raise BenchError(f"--protocol must be http or grpc, not '{protocol}'")


async def describe(options: BenchOptions, source: ModelSource) -> ModelInfo:
    metadata = await source.metadata(options.model, options.model_version)
    config = await source.config(options.model, options.model_version)
    model = parse_model(options.model, metadata, config, options.model_version)
    if model.decoupled:
        raise BenchError(
            f"model '{model.name}' is decoupled (several responses a request): not supported"
        )
    return model


async def run_bench(
    options: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Measure every level; the report as a dict (see README, "Measuring")."""
    if options.protocol not in ("http", "grpc"):
        raise BenchError(f"--protocol must be http or grpc, not '{options.protocol}'")
    host, port = split_url(options.url, options.protocol)
    source = source_for(options.protocol, host, port)
    regions: SharedMemoryRegions | None = None
    try:
        model = await describe(options, source)
        if model.sequence and options.request_rates:
            raise BenchError("sequence models are measured with --concurrency, not --request-rate")
        inputs = build_inputs(model, options.input_data, options.shapes, options.batch_size)
        refs = None
        if options.shared_memory == "system":
            regions = SharedMemoryRegions(source, options.protocol)
            refs = await regions.setup(model, inputs, options.output_shared_memory_bytes)
        elif options.shared_memory != "none":
            raise BenchError("--shared-memory must be none or system (CUDA is not supported)")
        requests = RequestSet(
            model, inputs, options.protocol, options.binary, f"{host}:{port}", refs
        )
        levels: list[tuple[str, float]] = [("concurrency", c) for c in options.concurrency]
        levels += [("request_rate", r) for r in options.request_rates]
        results = []
        sequence_start = 1
        for kind, value in levels:
            progress(f"{kind.replace('_', ' ')} {value:g}")
            generator = LoadGenerator(
                requests,
                host,
                port,
                options.sequence_length if model.sequence else 0,
                sequence_start,
            )
            results.append(await _measure(generator, source, model, options, kind, value))
            sequence_start += 1_000_000
        return {
            "model": model.name,
            "model_version": model.version or None,
            "url": f"{host}:{port}",
            "protocol": options.protocol,
            "encoding": "binary"
            if options.binary and options.protocol == "http"
            else ("protobuf" if options.protocol == "grpc" else "json"),
            "shared_memory": options.shared_memory,
            "batch_size": options.batch_size,
            "input_data": options.input_data,
            "inputs": {
                name: {"shape": list(array.shape), "datatype": str(array.dtype)}
                for name, array in inputs.requests[0].items()
            },
            "window_s": options.window_s,
            "stability_percentage": options.stability * 100,
            "levels": results,
        }
    finally:
        if regions is not None:
            await regions.close()
        source.close()


async def _statistics(source: ModelSource, model: ModelInfo) -> dict[str, int] | None:
    try:
        return stats_totals(await source.statistics(model.name, model.version))
    except (BenchError, OSError):
        return None


async def _settled_statistics(source: ModelSource, model: ModelInfo) -> dict[str, int] | None:
    """Statistics once they stop moving: a server may count a request just after answering it."""
    previous = await _statistics(source, model)
    for _ in range(20):
        await asyncio.sleep(0.05)
        current = await _statistics(source, model)
        if current == previous:
            break
        previous = current
    return previous


async def _measure(
    generator: LoadGenerator,
    source: ModelSource,
    model: ModelInfo,
    options: BenchOptions,
    kind: str,
    value: float,
) -> dict[str, Any]:
    label = status_label(options.protocol)
    before_all = await _statistics(source, model)
    rate_task = None
    try:
        if kind == "concurrency":
            await generator.start_concurrency(int(value))
        else:
            rate_task = asyncio.ensure_future(
                generator.run_rate(value, options.request_distribution)
            )
    except OSError as exc:
        await generator.stop(1.0)
        raise BenchError(f"cannot connect to {generator.host}:{generator.port}: {exc}") from exc
    await asyncio.sleep(options.warmup_s)
    boundaries = [time.perf_counter()]
    snapshots = [await _statistics(source, model)]
    windows = []
    while True:
        await asyncio.sleep(options.window_s)
        now = time.perf_counter()
        snapshots.append(await _statistics(source, model))
        windows.append(
            window(generator.records, boundaries[-1], now, generator.ok_status, options.percentile)
        )
        boundaries.append(now)
        stable = is_stable(windows, options.stability)
        if stable or len(windows) >= options.max_trials:
            break
    await generator.stop()
    if rate_task is not None:
        await rate_task
    after_all = await _settled_statistics(source, model)
    used = min(STABILITY_WINDOWS, len(windows))
    start, end = boundaries[-used - 1], boundaries[-1]
    records = generator.records
    latencies = success_latencies(records, start, end, generator.ok_status)
    seconds = end - start
    totals = status_counts(records, 0.0, float("inf"), label)
    client_ok = totals.get(label(generator.ok_status), 0)
    server_totals = server_split(before_all, after_all)
    return {
        kind: value,
        "stable": stable,
        "windows": len(windows),
        "measured_s": round(seconds, 3),
        "requests": len(latencies),
        "throughput_req_s": len(latencies) / seconds,
        "throughput_infer_s": len(latencies) * options.batch_size / seconds,
        "latency_ms": latency_summary(latencies),
        "window_throughputs": [round(w.throughput, 2) for w in windows],
        "errors": {
            status: count
            for status, count in status_counts(records, start, end, label).items()
            if status != label(generator.ok_status)
        },
        "server": server_split(snapshots[-used - 1], snapshots[-1]),
        "totals": {
            "sent": records.sent,
            "completed": len(records.statuses),
            "succeeded": client_ok,
            "by_status": totals,
            "delayed": records.delayed,
            "server_success_count": server_totals["success_count"] if server_totals else None,
            "server_fail_count": server_totals["fail_count"] if server_totals else None,
            "server_inference_count": server_totals["inference_count"] if server_totals else None,
        },
        "error_messages": {label(s): text for s, text in records.messages.items()},
    }
