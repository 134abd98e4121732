"""Serving metrics: Triton-compatible nv_inference_* counters and ferry latency/batch histograms."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from monitoring.families import Family
from monitoring.metrics_render import sequence_families, serving_families
from monitoring.observer import (
    BatchRecord,
    ModelEventRecord,
    ObservedRecord,
    RequestRecord,
)
from monitoring.serving_stats import (
    LATENCY_BUCKETS_S,
    CacheStats,
    Histogram,
    VersionStats,
    snapshot_copy,
)

log = logging.getLogger("ferry.monitoring.metrics")

PendingCounts = Callable[[], Iterable[tuple[str, str, int]]]
# (model, version, live sequences, starts, ends, idle releases) per sequence-batched version
SequenceCounts = Callable[[], Iterable[tuple[str, str, int, int, int, int]]]
# the response cache's totals over all models: nv_cache_* gauge name (no prefix) -> value
CacheTotals = Callable[[], Mapping[str, float]]
_US = 1e6


class ServingMetrics:
    """Observer that keeps per-version counters and histograms; updates are short dict edits."""

    def __init__(
        self,
        pending_requests: PendingCounts | None = None,
        sequence_counts: SequenceCounts | None = None,
        cache_totals: CacheTotals | None = None,
    ) -> None:
        self._pending_requests = pending_requests
        self._sequence_counts = sequence_counts
        self._cache_totals = cache_totals
        self._stats: dict[tuple[str, str], VersionStats] = {}
        self._known_models: set[str] = set()
        self._lock = threading.Lock()

    def _get(self, model: str, version: str) -> VersionStats:
        stats = self._stats.get((model, version))
        if stats is None:
            stats = self._stats[(model, version)] = VersionStats()
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
    def _request(stats: VersionStats, r: RequestRecord) -> None:
        if not r.success:
            reason = r.failure_reason if r.failure_reason in stats.failure else "OTHER"
            stats.failure[reason] += 1
            return
        stats.success += 1
        stats.request_us += r.request_duration_s * _US
        stats.queue_us += r.queue_duration_s * _US
        if r.cache_hit is not None:
            cache = stats.cache = stats.cache or CacheStats()
            if r.cache_hit:  # no inference, no compute (Triton's counting)
                cache.hits += 1
                cache.hit_us += r.cache_duration_s * _US
                ServingMetrics._request_histogram(stats, r)
                stats.queue_s.observe(0.0)
                return
            cache.misses += 1
            cache.miss_us += r.cache_duration_s * _US
        stats.inference_count += r.batch_size
        stats.compute_input_us += r.compute_input_duration_s * _US
        stats.compute_infer_us += r.compute_infer_duration_s * _US
        stats.compute_output_us += r.compute_output_duration_s * _US
        ServingMetrics._request_histogram(stats, r)
        stats.queue_s.observe(r.queue_duration_s)
        stats.compute_s.observe(
            r.compute_input_duration_s + r.compute_infer_duration_s + r.compute_output_duration_s
        )

    @staticmethod
    def _request_histogram(stats: VersionStats, r: RequestRecord) -> None:
        histogram = stats.request_s.get(r.protocol)
        if histogram is None:
            histogram = stats.request_s[r.protocol] = Histogram(LATENCY_BUCKETS_S)
        histogram.observe(r.request_duration_s)

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
        with self._lock:
            snapshot = {key: snapshot_copy(stats) for key, stats in self._stats.items()}
        pending: list[tuple[str, str, int]] = []
        if self._pending_requests is not None:
            try:
                pending = [(str(m), str(v), int(c)) for m, v, c in self._pending_requests()]
            except Exception:
                log.exception("pending_requests callable failed")
        totals: Mapping[str, float] | None = None
        if self._cache_totals is not None:
            try:
                totals = self._cache_totals()
            except Exception:
                log.exception("cache_totals callable failed")
        sequences: list[tuple[str, str, int, int, int, int]] = []
        if self._sequence_counts is not None:
            try:
                sequences = [
                    (str(m), str(v), int(a), int(s), int(e), int(i))
                    for m, v, a, s, e, i in self._sequence_counts()
                ]
            except Exception:
                log.exception("sequence_counts callable failed")
        return serving_families(snapshot, pending, totals) + sequence_families(sequences)
