"""Benchmark summaries and the pick: fastest passing variant that beats FP32, ties to simpler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optimizers.benchmark import Timing
from optimizers.variants import VARIANTS

# Within this fraction of the best score, the simpler variant (lower rank) wins.
TIE_TOLERANCE = 0.03


def summarize(timings: Mapping[int, Timing]) -> dict[str, Any]:
    """Report fields: latency percentiles at the smallest batch (1), throughput at the largest,
    each with the batch size it was measured at and its run-to-run spread."""
    by_batch = {batch: timing.summary() for batch, timing in sorted(timings.items())}
    smallest, largest = by_batch[min(by_batch)], by_batch[max(by_batch)]
    return {
        "p50_ms": smallest["p50_ms"],
        "p95_ms": smallest["p95_ms"],
        "p99_ms": smallest["p99_ms"],
        "latency_batch": smallest["batch"],
        "latency_spread": smallest["spread"],
        "throughput": largest["throughput"],
        "throughput_batch": largest["batch"],
        "throughput_spread": largest["spread"],
        "benchmark": list(by_batch.values()),
    }


def spread(row: Mapping[str, Any], objective: str) -> float:
    """The run-to-run spread of the figure the objective scores (0 when unknown)."""
    key = "throughput_spread" if objective == "throughput" else "latency_spread"
    return float(row.get(key, 0.0) or 0.0)


def score(row: Mapping[str, Any], objective: str) -> float:
    """Higher is better: throughput, or the inverse of p95 latency."""
    if objective == "throughput":
        return float(row["throughput"])
    return 1.0 / float(row["p95_ms"])


def choose(
    reference: dict[str, Any], rows: Sequence[dict[str, Any]], objective: str, min_gain: float
) -> str | None:
    """Name of the variant to publish (None when nothing beats FP32 by min_gain).

    A speed-up counts only when it exceeds the run-to-run spread: the gain over FP32 must be
    larger than the candidate's and FP32's spreads together, or it may be noise. A `min_gain`
    of 1 or less asks for no speed-up, so then there is no spread to exceed either."""
    base = score(reference, objective)
    eligible = [row for row in rows if row.get("passed") and "throughput" in row]
    for row in eligible:
        row["speedup"] = round(score(row, objective) / base, 3)
        row["noise"] = round(spread(row, objective) + spread(reference, objective), 4)
    winners = [
        row
        for row in eligible
        if row["speedup"] >= min_gain and (min_gain <= 1 or row["speedup"] - 1 > row["noise"])
    ]
    for row in rows:
        if row.get("passed") and "throughput" in row and row not in winners:
            if row["speedup"] >= min_gain:
                row["reason"] = (
                    f"within noise: {row['speedup']:.2f}x FP32 {objective} does not exceed the "
                    f"run-to-run spread (+/-{row['noise']:.0%})"
                )
                continue
            row["reason"] = (
                f"too slow: not faster than FP32 by {min_gain:g}x on {objective} "
                f"({row['speedup']:.2f}x)"
            )
    if not winners:
        return None
    best = max(score(row, objective) for row in winners)
    close = [row for row in winners if score(row, objective) >= best * (1 - TIE_TOLERANCE)]
    pick = min(close, key=lambda row: VARIANTS[row["variant"]].rank)
    pick["reason"] = f"published: {pick['speedup']:.2f}x FP32 {objective}"
    for row in winners:
        if row is not pick:
            row["reason"] = f"passed: {row['speedup']:.2f}x FP32 {objective}, not the pick"
    return str(pick["variant"])
