"""perf_analyzer's stability rule, window slicing and the server-side split, on made-up records."""

from __future__ import annotations

import numpy as np

from measure.load import Records
from measure.windows import (
    Window,
    is_stable,
    latency_summary,
    server_split,
    stats_totals,
    status_counts,
    success_latencies,
    window,
)


def records(entries: list[tuple[float, float, int]]) -> Records:
    made = Records()
    for end, latency, status in entries:
        made.add(end, latency, status, b"boom", status == 200)
    return made


def w(throughput: float, latency: float) -> Window:
    return Window(0.0, 1.0, 10, throughput, latency)


def test_three_windows_within_tolerance_are_stable() -> None:
    assert not is_stable([w(100, 1.0), w(105, 1.0)], 0.10)  # fewer than three
    assert is_stable([w(50, 9.0), w(100, 1.0), w(109, 1.05), w(101, 1.0)], 0.10)
    assert not is_stable([w(100, 1.0), w(111, 1.0), w(100, 1.0)], 0.10)  # throughput 11 % apart
    assert not is_stable([w(100, 1.0), w(100, 1.2), w(100, 1.0)], 0.10)  # latency 20 % apart
    empty = Window(0.0, 1.0, 0, 0.0, float("inf"))
    assert not is_stable([w(100, 1.0), w(100, 1.0), empty], 0.10)


def test_windows_count_successes_by_completion_time() -> None:
    made = records(
        [(0.5, 0.1, 200), (1.2, 0.2, 200), (1.5, 0.3, 503), (1.9, 0.4, 200), (2.1, 9, 200)]
    )
    latencies = success_latencies(made, 1.0, 2.0, 200)
    assert latencies.tolist() == [0.2, 0.4]
    one = window(made, 1.0, 2.0, 200, None)
    assert one.successes == 2 and one.throughput == 2.0
    assert abs(one.stabilizing_latency_s - 0.3) < 1e-12
    assert window(made, 1.0, 2.0, 200, 50).stabilizing_latency_s == np.percentile([0.2, 0.4], 50)
    assert status_counts(made, 1.0, 2.0, lambda s: f"HTTP {s}") == {"HTTP 200": 2, "HTTP 503": 1}
    assert made.messages == {503: "boom"}


def test_latency_summary_percentiles_in_ms() -> None:
    summary = latency_summary(np.arange(1, 101) / 1000.0)
    assert summary["p50"] == np.percentile(np.arange(1, 101), 50)
    assert summary["p99"] == np.percentile(np.arange(1, 101), 99)
    assert summary["avg"] == 50.5
    assert np.isnan(latency_summary(np.array([]))["p50"])


def stats(success: int, queue_ns: int, infer_ns: int, inferences: int, executions: int) -> dict:
    return {
        "model_stats": [
            {
                "inference_count": inferences,
                "execution_count": executions,
                "inference_stats": {
                    "success": {"count": success, "ns": success * 1_000_000},
                    "fail": {"count": 1, "ns": 5},
                    "queue": {"count": success, "ns": queue_ns},
                    "compute_input": {"count": success, "ns": success * 1000},
                    "compute_infer": {"count": success, "ns": infer_ns},
                    "compute_output": {"count": success, "ns": success * 2000},
                },
            }
        ]
    }


def test_server_split_is_the_delta_per_request() -> None:
    before = stats_totals(stats(10, 10 * 100_000, 10 * 500_000, 10, 5))
    after = stats_totals(stats(30, 30 * 100_000 + 20 * 50_000, 30 * 500_000, 40, 15))
    split = server_split(before, after)
    assert split is not None
    assert split["success_count"] == 20 and split["fail_count"] == 0
    assert split["avg_batch"] == 30 / 10
    assert split["request_us"] == 1000.0
    assert split["queue_us"] == 150.0  # (20 x 100 us + 20 x 50 us) / 20
    assert split["compute_input_us"] == 1.0 and split["compute_output_us"] == 2.0
    assert split["compute_infer_us"] == 500.0
    assert split["overhead_us"] == 1000.0 - 150.0 - 503.0
    assert server_split(None, after) is None
