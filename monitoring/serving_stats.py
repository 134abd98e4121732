"""Per-model-version serving counters and fixed-bucket histograms: what the metrics observer
accumulates and the renderer turns into metric families."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

# Inference latencies: 100 µs .. 60 s.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


class Histogram:
    """Fixed-bucket histogram: per-bucket counts (last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value (bucket upper bounds are inclusive, as Prometheus's `le`)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass
class VersionStats:
    """Everything counted for one model version since it was first seen."""

    success: int = 0
    failure: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    inference_count: int = 0
    exec_count: int = 0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_input_us: float = 0.0
    compute_infer_us: float = 0.0
    compute_output_us: float = 0.0
    request_s: dict[str, Histogram] = field(default_factory=dict)  # by protocol
    queue_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    compute_s: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    ready: float | None = None
    load_duration_s: float | None = None
    # response cache (nv_cache_*_per_model); None until a request of a caching model is seen
    cache: CacheStats | None = None


@dataclass
class CacheStats:
    """Response cache counters of one model version."""

    hits: int = 0
    misses: int = 0
    hit_us: float = 0.0
    miss_us: float = 0.0


def snapshot_copy(stats: VersionStats) -> VersionStats:
    """A copy that later updates do not touch (taken under the observer's lock)."""

    def hist(h: Histogram) -> Histogram:
        new = Histogram(h.bounds)
        new.counts, new.total = list(h.counts), h.total
        return new

    return VersionStats(
        stats.success,
        dict(stats.failure),
        stats.inference_count,
        stats.exec_count,
        stats.request_us,
        stats.queue_us,
        stats.compute_input_us,
        stats.compute_infer_us,
        stats.compute_output_us,
        {p: hist(h) for p, h in stats.request_s.items()},
        hist(stats.queue_s),
        hist(stats.compute_s),
        hist(stats.batch_size),
        stats.ready,
        stats.load_duration_s,
        None if stats.cache is None else dataclasses.replace(stats.cache),
    )
