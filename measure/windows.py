"""Measurement windows and perf_analyzer's stability rule, as pure functions over the records.

A load level is measured in consecutive windows; it is stable when, over the last three windows,
the largest throughput is within `tolerance` of the smallest (max/min <= 1 + tolerance), and the
same holds for the latency that stabilizes (the average, or a percentile), and no window is empty.
The reported figures merge those three windows: client latencies pooled, throughput over their
summed length, and the server's statistics as the delta from the first window's start to the last
one's end (perf_analyzer's MergePerfStatusReports).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from measure.load import Records

STABILITY_WINDOWS = 3
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Window:
    """One measurement window: [start, end) on the perf_counter clock."""

    start: float
    end: float
    successes: int
    throughput: float  # successful requests per second
    stabilizing_latency_s: float


def _span(records: Records, start: float, end: float) -> tuple[int, int]:
    ends = records.ends
    return bisect.bisect_left(ends, start), bisect.bisect_left(ends, end)


def success_latencies(records: Records, start: float, end: float, ok_status: int) -> np.ndarray:
    """Latencies (s) of the successful requests that completed in [start, end)."""
    first, last = _span(records, start, end)
    latencies = np.frombuffer(records.latencies, dtype=np.float64)[first:last]
    statuses = np.frombuffer(records.statuses, dtype=np.int32)[first:last]
    selected: np.ndarray = latencies[statuses == ok_status]
    return selected


def window(
    records: Records, start: float, end: float, ok_status: int, percentile: int | None
) -> Window:
    values = success_latencies(records, start, end, ok_status)
    if len(values) == 0:
        return Window(start, end, 0, 0.0, float("inf"))
    latency = float(np.percentile(values, percentile)) if percentile else float(values.mean())
    return Window(start, end, len(values), len(values) / (end - start), latency)


def is_stable(windows: Sequence[Window], tolerance: float) -> bool:
    """perf_analyzer's rule over the last three windows."""
    if len(windows) < STABILITY_WINDOWS:
        return False
    last = windows[-STABILITY_WINDOWS:]
    if any(w.successes == 0 for w in last):
        return False
    throughputs = [w.throughput for w in last]
    latencies = [w.stabilizing_latency_s for w in last]
    return (
        max(throughputs) / min(throughputs) <= 1 + tolerance
        and max(latencies) / min(latencies) <= 1 + tolerance
    )


def status_counts(
    records: Records, start: float, end: float, label: Callable[[int], str]
) -> dict[str, int]:
    """How many requests ended in [start, end) with each status label."""
    first, last = _span(records, start, end)
    labels, counts = np.unique(
        np.frombuffer(records.statuses, dtype=np.int32)[first:last], return_counts=True
    )
    return {label(int(status)): int(count) for status, count in zip(labels, counts, strict=True)}


def latency_summary(values: np.ndarray) -> dict[str, float]:
    """Average, standard deviation and p50/p90/p95/p99 in milliseconds."""
    if len(values) == 0:
        return {key: float("nan") for key in ("avg", "std", *(f"p{p}" for p in PERCENTILES))}
    ms = values * 1000.0
    summary = {"avg": float(ms.mean()), "std": float(ms.std())}
    for p, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
        summary[f"p{p}"] = float(value)
    return summary


# --- server statistics (Triton's statistics extension) -----------------------------------------

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def stats_totals(stats: Mapping[str, Any] | None) -> dict[str, int] | None:
    """Sum a `/stats` answer over its versions: counts and nanoseconds per duration."""
    if stats is None:
        return None
    totals = {"inference_count": 0, "execution_count": 0}
    for key in _DURATIONS:
        totals[f"{key}_count"] = totals[f"{key}_ns"] = 0
    for model in stats.get("model_stats", []):
        totals["inference_count"] += int(model.get("inference_count", 0))
        totals["execution_count"] += int(model.get("execution_count", 0))
        inference = model.get("inference_stats", {})
        for key in _DURATIONS:
            totals[f"{key}_count"] += int(inference.get(key, {}).get("count", 0))
            totals[f"{key}_ns"] += int(inference.get(key, {}).get("ns", 0))
    return totals


def server_split(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None
) -> dict[str, float] | None:
    """The server's side of a span: counts and the average request split in microseconds
    (overhead + queue + compute input + compute infer + compute output), as perf_analyzer prints."""
    if before is None or after is None:
        return None
    delta = {key: after[key] - before[key] for key in after}

    def average_us(key: str) -> float:
        count = delta[f"{key}_count"]
        return delta[f"{key}_ns"] / count / 1000.0 if count else 0.0

    request_us = average_us("success")
    queue_us = average_us("queue")
    compute = {key: average_us(key) for key in ("compute_input", "compute_infer", "compute_output")}
    executions = delta["execution_count"]
    return {
        "success_count": delta["success_count"],
        "fail_count": delta["fail_count"],
        "inference_count": delta["inference_count"],
        "execution_count": executions,
        "avg_batch": delta["inference_count"] / executions if executions else 0.0,
        "request_us": request_us,
        "overhead_us": max(0.0, request_us - queue_us - sum(compute.values())),
        "queue_us": queue_us,
        "compute_input_us": compute["compute_input"],
        "compute_infer_us": compute["compute_infer"],
        "compute_output_us": compute["compute_output"],
    }
