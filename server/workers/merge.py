"""One server's numbers from every worker's: Triton statistics and Prometheus families, merged;
and the client shared memory regions every worker holds, as one list.

Counters, durations, histograms and most gauges add up (each worker's `nv_cache_util` is its
part of the server's cache size); a few gauges take the minimum or maximum instead (a model is
ready only where every worker has it ready; a load took as long as the slowest)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

# (name, documentation, type, [(sample name, labels, value), ...]), as a worker sends it
WireFamily = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]

_CUMULATIVE_KINDS = frozenset({"counter", "histogram", "summary"})
_MIN_FAMILIES = frozenset(
    {"ferry_model_ready", "process_start_time_seconds", "ferry_drift_p_value"}
)
_MAX_FAMILIES = frozenset(
    {
        "nv_model_load_duration_secs",
        "process_max_fds",
        "python_info",
        "ferry_drift_score",
        "ferry_drift_detected",
        "ferry_drift_last_evaluation_timestamp_seconds",
    }
)


def _from_shared_evaluator(name: str) -> bool:
    """Drift families: every worker reports the one shared evaluator's figures (a snapshot at
    most a feeder pass old), so they are not added up; the highest is the newest."""
    return name.startswith("ferry_drift_") or name == "ferry_prediction_class_total"


def merge_statistics(per_worker: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Triton `model_stats` lists of several workers as one list: counts and nanoseconds add
    up, `last_inference` is the latest, `batch_stats` add up per batch size; the order is the
    first worker's (a version only another worker has comes after)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for stats in per_worker:
        for entry in stats:
            key = (entry["name"], entry["version"])
            if key in merged:
                _add_into(merged[key], entry)
            else:
                merged[key] = copy.deepcopy(entry)
    return list(merged.values())


def _add_into(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if key in ("name", "version"):
            continue
        if key == "last_inference":
            target[key] = max(int(target.get(key, 0)), int(value))
        elif key == "batch_stats":
            target[key] = _merge_batches(target.get(key, []), value)
        elif isinstance(value, dict):
            _add_into(target.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            target[key] = target.get(key, 0) + value
        else:
            target.setdefault(key, copy.deepcopy(value))


def _merge_batches(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    by_size = {int(item["batch_size"]): copy.deepcopy(item) for item in ours}
    for item in theirs:
        size = int(item["batch_size"])
        if size in by_size:
            _add_into(by_size[size], {k: v for k, v in item.items() if k != "batch_size"})
        else:
            by_size[size] = copy.deepcopy(item)
    return [by_size[size] for size in sorted(by_size)]


def merge_regions(per_worker: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Shared memory region statuses of several workers as one list: each name once, in the
    order first seen (every worker registers alike; one may still hold a region that the others
    dropped when it was unregistered, until its request is done, as a single server does)."""
    merged: dict[str, dict[str, Any]] = {}
    for regions in per_worker:
        for region in regions:
            merged.setdefault(region["name"], region)
    return list(merged.values())


def wire_families(metrics: Iterable[Metric]) -> list[WireFamily]:
    """A worker's metric families, in a form that travels as JSON."""
    return [
        (
            metric.name,
            metric.documentation,
            metric.type,
            [(s.name, dict(s.labels), float(s.value)) for s in metric.samples],
        )
        for metric in metrics
    ]


def merge_families(per_worker: Iterable[list[WireFamily]]) -> list[Metric]:
    """Every worker's families as one server's: samples with the same name and labels combine
    (sum, or min/max for the gauges named above); family order is first-seen."""
    result: list[Metric] = []
    for name, documentation, kind, samples in merge_wire(per_worker):
        metric = Metric(name, documentation, kind)
        for sample_name, labels, value in samples:
            metric.add_sample(sample_name, labels, value)
        result.append(metric)
    return result


def merge_wire(per_worker: Iterable[list[WireFamily]]) -> list[WireFamily]:
    """merge_families, in the form families travel in."""
    families: dict[str, tuple[str, str, dict[tuple[Any, ...], list[Any]]]] = {}
    for wire in per_worker:
        for name, documentation, kind, samples in wire:
            _, _, merged = families.setdefault(name, (documentation, kind, {}))
            combine = _combine(name)
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in merged:
                    merged[key] = [sample_name, labels, value]
                elif combine is None:
                    merged[key][2] += value
                else:
                    merged[key][2] = combine(merged[key][2], value)
    return [
        (name, documentation, kind, [(s[0], s[1], s[2]) for s in merged.values()])
        for name, (documentation, kind, merged) in families.items()
    ]


def _combine(name: str) -> Callable[[float, float], float] | None:
    """How a family's samples combine across workers; None: they add up."""
    if name in _MIN_FAMILIES:
        return min
    if name in _MAX_FAMILIES or _from_shared_evaluator(name):
        return max
    return None


def cumulative_families(wire: Iterable[WireFamily]) -> list[WireFamily]:
    """The families whose samples only grow and add up across workers (counters, histograms,
    summaries): what a worker that died had counted. Gauges (ready, pending requests, ...) and
    the figures of the shared drift evaluator are left out, and so are `_created` stamps."""
    return [
        (name, documentation, kind, [s for s in samples if not s[0].endswith("_created")])
        for name, documentation, kind, samples in wire
        if kind in _CUMULATIVE_KINDS and _combine(name) is None
    ]
