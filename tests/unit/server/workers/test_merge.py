"""Merging every worker's statistics and metric families into one server's."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import Metric

from monitoring.families import Family, render
from server.workers.merge import merge_families, merge_regions, merge_statistics, wire_families


def stats(name: str, success: int, ns: int, last: int, batches: dict[int, int]) -> dict[str, Any]:
    duration = {"count": success, "ns": ns}
    return {
        "name": name,
        "version": "1",
        "last_inference": last,
        "inference_count": success,
        "execution_count": sum(batches.values()),
        "inference_stats": {"success": dict(duration), "fail": {"count": 0, "ns": 0}},
        "response_stats": {},
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": count, "ns": 10 * count}}
            for size, count in sorted(batches.items())
        ],
        "memory_usage": [],
    }


def test_statistics_add_up_per_version() -> None:
    merged = merge_statistics(
        [
            [stats("a", 3, 300, 1000, {1: 1, 2: 1}), stats("b", 1, 10, 5, {1: 1})],
            [stats("a", 4, 400, 2000, {2: 1, 4: 1})],
            [],
        ]
    )
    assert [entry["name"] for entry in merged] == ["a", "b"]
    a = merged[0]
    assert a["inference_count"] == 7 and a["execution_count"] == 4
    assert a["inference_stats"]["success"] == {"count": 7, "ns": 700}
    assert a["last_inference"] == 2000
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in a["batch_stats"]] == [
        (1, 1),
        (2, 2),
        (4, 1),
    ]
    assert a["memory_usage"] == [] and a["version"] == "1"
    assert merged[1] == stats("b", 1, 10, 5, {1: 1})


def test_merging_leaves_the_inputs_alone() -> None:
    first = [stats("a", 1, 1, 1, {1: 1})]
    merge_statistics([first, [stats("a", 1, 1, 1, {1: 1})]])
    assert first == [stats("a", 1, 1, 1, {1: 1})]


def family(name: str, kind: str, samples: list[tuple[str, dict[str, str], float]]) -> Metric:
    result = Family(name, "doc", kind)
    for sample_name, labels, value in samples:
        result.metric.add_sample(sample_name, labels, value)
    return result.metric


def test_families_sum_counters_and_histograms_and_combine_gauges() -> None:
    labels = {"model": "m", "version": "1"}

    def worker(success: float, ready: float, load_s: float, bucket: float) -> list[Metric]:
        return [
            family(
                "nv_inference_request_success",
                "counter",
                [("nv_inference_request_success", labels, success)],
            ),
            family("ferry_model_ready", "gauge", [("ferry_model_ready", labels, ready)]),
            family(
                "nv_model_load_duration_secs",
                "gauge",
                [("nv_model_load_duration_secs", labels, load_s)],
            ),
            family(
                "ferry_batch_size",
                "histogram",
                [
                    ("ferry_batch_size_bucket", {**labels, "le": "1"}, bucket),
                    ("ferry_batch_size_bucket", {**labels, "le": "+Inf"}, bucket + 1),
                    ("ferry_batch_size_count", labels, bucket + 1),
                ],
            ),
        ]

    merged = merge_families(
        [wire_families(worker(5, 1, 0.5, 2)), wire_families(worker(7, 0, 0.25, 3))]
    )
    text = render(merged).decode()
    assert 'nv_inference_request_success{model="m",version="1"} 12\n' in text
    assert 'ferry_model_ready{model="m",version="1"} 0\n' in text  # ready where every worker is
    assert 'nv_model_load_duration_secs{model="m",version="1"} 0.5\n' in text  # the slowest
    assert 'ferry_batch_size_bucket{model="m",version="1",le="1"} 5\n' in text
    assert 'ferry_batch_size_bucket{model="m",version="1",le="+Inf"} 7\n' in text
    assert 'ferry_batch_size_count{model="m",version="1"} 7\n' in text
    assert "# TYPE nv_inference_request_success counter" in text


def test_the_cache_fill_ratio_adds_up_over_the_workers() -> None:
    """Each worker reports its part of the server's cache size: the server is as full as the
    sum (server/response_cache.py)."""
    merged = merge_families(
        [
            wire_families([family("nv_cache_util", "gauge", [("nv_cache_util", {}, util)])])
            for util in (0.25, 0.5, 0.0)
        ]
    )
    assert "nv_cache_util 0.75\n" in render(merged).decode()


def test_a_series_only_one_worker_has_is_kept() -> None:
    one = [family("c", "counter", [("c", {"model": "x"}, 1.0)])]
    two = [family("c", "counter", [("c", {"model": "y"}, 2.0)])]
    text = render(merge_families([wire_families(one), wire_families(two)])).decode()
    assert 'c{model="x"} 1\n' in text and 'c{model="y"} 2\n' in text


def test_regions_are_listed_once_in_the_order_first_seen() -> None:
    def region(name: str, size: int) -> dict[str, Any]:
        return {"name": name, "key": f"/{name}", "offset": 0, "byte_size": size}

    held_on_one = [region("in", 8), region("held", 4), region("out", 8)]
    assert merge_regions([held_on_one, [region("in", 8), region("out", 8)], []]) == held_on_one
    assert merge_regions([[], [region("late", 2)]]) == [region("late", 2)]
