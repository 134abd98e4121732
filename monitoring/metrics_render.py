"""Turn a snapshot of serving statistics into Triton-named and ferry metric families."""

from __future__ import annotations

from collections.abc import Mapping

from monitoring.families import Family
from monitoring.serving_stats import VersionStats

_TRITON_COUNTERS = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        "success",
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        "inference_count",
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        "exec_count",
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        "request_us",
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        "queue_us",
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        "compute_input_us",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        "compute_infer_us",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        "compute_output_us",
    ),
)


# Triton's response cache series: per model (from requests) and over all models (gauges)
_CACHE_PER_MODEL = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", "hits"),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        "hit_us",
    ),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", "misses"),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        "miss_us",
    ),
)
CACHE_TOTALS = (
    ("util", "Cache utilization [0.0 - 1.0]"),
    ("num_entries", "Number of responses stored in response cache"),
    ("num_hits", "Number of cache hits in response cache"),
    ("num_misses", "Number of cache misses in response cache"),
    ("num_lookups", "Number of cache lookups in response cache"),
    ("num_evictions", "Number of cache evictions in response cache"),
    ("lookup_duration", "Total cache lookup duration (hit and miss), in microseconds"),
    ("insertion_duration", "Total cache insertion duration, in microseconds"),
)


def cache_families(
    snapshot: dict[tuple[str, str], VersionStats], totals: Mapping[str, float] | None
) -> list[Family]:
    """nv_cache_* families: per model version that uses the cache, and the cache's totals."""
    per_model = [Family(name, doc, "counter") for name, doc, _ in _CACHE_PER_MODEL]
    for (model, version), stats in sorted(snapshot.items()):
        if stats.cache is None:
            continue
        for family, (_, _, attr) in zip(per_model, _CACHE_PER_MODEL, strict=True):
            family.add({"model": model, "version": version}, getattr(stats.cache, attr))
    if totals is None:
        return per_model
    gauges = []
    for key, doc in CACHE_TOTALS:
        gauge = Family(f"nv_cache_{key}", doc, "gauge")
        gauge.add({}, totals.get(key, 0.0))
        gauges.append(gauge)
    return per_model + gauges


def serving_families(
    snapshot: dict[tuple[str, str], VersionStats],
    pending: list[tuple[str, str, int]],
    cache_totals: Mapping[str, float] | None = None,
) -> list[Family]:
    """All serving families, in a stable order; empty families are still described."""
    success = Family(*_TRITON_COUNTERS[0][:2], "counter")
    failure = Family(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        "counter",
    )
    counters = [Family(n, doc, "counter") for n, doc, _ in _TRITON_COUNTERS[1:]]
    pending_family = Family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
    )
    load = Family("nv_model_load_duration_secs", "Model load time in seconds", "gauge")
    ready = Family(
        "ferry_model_ready", "1 when the model version is loaded and ready, else 0", "gauge"
    )
    request = Family(
        "ferry_request_duration_seconds",
        "End-to-end inference request duration (successful requests)",
        "histogram",
    )
    queue = Family(
        "ferry_queue_duration_seconds", "Time a request waited for its batch", "histogram"
    )
    compute = Family(
        "ferry_compute_duration_seconds",
        "Compute time (input + infer + output) of the batch a request ran in",
        "histogram",
    )
    batch = Family("ferry_batch_size", "Rows per model execution (formed batch size)", "histogram")
    for (model, version), stats in sorted(snapshot.items()):
        labels = {"model": model, "version": version}
        success.add(labels, stats.success)
        for reason, count in stats.failure.items():
            failure.add({**labels, "reason": reason}, count)
        for family, (_, _, attr) in zip(counters, _TRITON_COUNTERS[1:], strict=True):
            family.add(labels, getattr(stats, attr))
        if stats.load_duration_s is not None:
            load.add(labels, stats.load_duration_s)
        if stats.ready is not None:
            ready.add(labels, stats.ready)
        for protocol, histogram in sorted(stats.request_s.items()):
            request.add_histogram(
                {**labels, "protocol": protocol},
                histogram.bounds,
                histogram.counts,
                histogram.total,
            )
        for family, histogram in (
            (queue, stats.queue_s),
            (compute, stats.compute_s),
            (batch, stats.batch_size),
        ):
            family.add_histogram(labels, histogram.bounds, histogram.counts, histogram.total)
    for model, version, count in sorted(pending):
        pending_family.add({"model": model, "version": version}, count)
    return [
        success,
        failure,
        *counters,
        pending_family,
        load,
        ready,
        request,
        queue,
        compute,
        batch,
        *cache_families(snapshot, cache_totals),
    ]


_SEQUENCE_FAMILIES = (
    ("ferry_sequence_active", "Live sequences (started, not ended nor released).", "gauge"),
    ("ferry_sequence_starts_total", "Requests that started a sequence.", "counter"),
    ("ferry_sequence_ends_total", "Requests that ended a sequence.", "counter"),
    (
        "ferry_sequence_idle_releases_total",
        "Sequences released after max_sequence_idle_microseconds without a request.",
        "counter",
    ),
)


def sequence_families(rows: list[tuple[str, str, int, int, int, int]]) -> list[Family]:
    """The sequence batcher's families: one sample per sequence-batched model version."""
    families = [Family(name, doc, kind) for name, doc, kind in _SEQUENCE_FAMILIES]
    for model, version, *values in rows:
        labels = {"model": model, "version": version}
        for family, value in zip(families, values, strict=True):
            family.add(labels, value)
    return families
