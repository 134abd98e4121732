"""Serving metrics: Triton-compatible nv_inference_* counters and ferry latency/batch histograms."""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from monitoring.families import Family
from monitoring.observer import (
    BatchRecord,
    ModelEventRecord,
    ObservedRecord,
    RequestRecord,
)

log = logging.getLogger("ferry.monitoring.metrics")

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
PendingCounts = Callable[[], Iterable[tuple[str, str, int]]]
_US = 1e6


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
class _VersionStats:
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


class ServingMetrics:
    """Observer that keeps per-version counters and histograms; updates are short dict edits."""

    def __init__(self, pending_requests: PendingCounts | None = None) -> None:
        self._pending_requests = pending_requests
        self._stats: dict[tuple[str, str], _VersionStats] = {}
        self._known_models: set[str] = set()
        self._lock = threading.Lock()

    def _get(self, model: str, version: str) -> _VersionStats:
        stats = self._stats.get((model, version))
        if stats is None:
            stats = self._stats[(model, version)] = _VersionStats()
        return stats

    def observe(self, record: ObservedRecord) -> None:
        """Account one record; never raises."""
        try:
            with self._lock:
                if isinstance(record, RequestRecord):
                    if (
                        record.success
                        or record.model in self._known_models
                        or (record.model, record.version) in self._stats
                    ):
                        self._request(self._get(record.model, record.version), record)
                elif isinstance(record, BatchRecord):
                    stats = self._get(record.model, record.version)
                    stats.exec_count += 1
                    stats.batch_size.observe(record.batch_size)
                elif isinstance(record, ModelEventRecord):
                    self._event(record)
        except Exception:
            log.exception("metrics failed to observe a record")

    @staticmethod
    def _request(stats: _VersionStats, r: RequestRecord) -> None:
        if not r.success:
            reason = r.failure_reason if r.failure_reason in stats.failure else "OTHER"
            stats.failure[reason] += 1
            return
        stats.success += 1
        stats.inference_count += r.batch_size
        stats.request_us += r.request_duration_s * _US
        stats.queue_us += r.queue_duration_s * _US
        stats.compute_input_us += r.compute_input_duration_s * _US
        stats.compute_infer_us += r.compute_infer_duration_s * _US
        stats.compute_output_us += r.compute_output_duration_s * _US
        histogram = stats.request_s.get(r.protocol)
        if histogram is None:
            histogram = stats.request_s[r.protocol] = Histogram(LATENCY_BUCKETS_S)
        histogram.observe(r.request_duration_s)
        stats.queue_s.observe(r.queue_duration_s)
        stats.compute_s.observe(
            r.compute_input_duration_s + r.compute_infer_duration_s + r.compute_output_duration_s
        )

    def _event(self, event: ModelEventRecord) -> None:
        key = (event.model, event.version)
        self._known_models.add(event.model)
        if event.state == "UNAVAILABLE" and event.reason == "unloaded":
            self._stats.pop(key, None)  # a deliberate unload: its series go away, as Triton's
            return
        stats = self._get(*key)
        stats.ready = 1.0 if event.state == "READY" else 0.0
        if event.load_duration_s is not None:
            stats.load_duration_s = event.load_duration_s

    def families(self) -> list[Family]:
        """Snapshot of every series (copied under the lock, formatted outside it)."""
        from monitoring.metrics_render import serving_families

        with self._lock:
            snapshot = {key: _copy(stats) for key, stats in self._stats.items()}
        pending: list[tuple[str, str, int]] = []
        if self._pending_requests is not None:
            try:
                pending = [(str(m), str(v), int(c)) for m, v, c in self._pending_requests()]
            except Exception:
                log.exception("pending_requests callable failed")
        return serving_families(snapshot, pending)


def _copy(stats: _VersionStats) -> _VersionStats:
    def hist(h: Histogram) -> Histogram:
        new = Histogram(h.bounds)
        new.counts, new.total = list(h.counts), h.total
        return new

    return _VersionStats(
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
    )
