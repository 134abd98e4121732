"""Triton-compatible exposition: exact names and labels, no _total, plain decimal values."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from monitoring import build_monitors
from monitoring.families import format_value
from monitoring.observer import BatchRecord, ModelEventRecord, RequestRecord

TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)

TRITON_NAMES = (*TRITON_COUNTERS, "nv_inference_pending_request_count")
TRITON_NAMING_LINTS = (
    'counter metrics should have "_total" suffix',
    "metric names should not contain abbreviated units",
    'non-histogram and non-summary metrics should not have "_count" suffix',
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (161, "161"),
        (8589934592.0, "8589934592"),
        (1e6, "1000000"),
        (12345678.5, "12345678.5"),
        (0.25, "0.25"),
        (1e22, "10000000000000000000000"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
        (-3.5, "-3.5"),
    ],
)
def test_values_are_plain_decimals(value: float, text: str) -> None:
    assert format_value(value) == text


def _exposition() -> str:
    monitors = build_monitors(pending_requests=lambda: [("digits", "1", 7)], drift_enabled=False)
    observe = [o.observe for o in monitors.observers]
    events = [ModelEventRecord("digits", "1", "READY", None, 1.25)]
    requests = [
        RequestRecord("digits", "1", "http", True, 4, 2000.0, 0.5, 0.001, 0.01, 0.001),
        RequestRecord("digits", "1", "grpc", True, 1, 0.004, 0.001, 0.0001, 0.002, 0.0001),
        RequestRecord("digits", "1", "http", False, 1, 0.001, failure_reason="REJECTED"),
        RequestRecord("digits", "1", "http", False, 1, 0.001, failure_reason="OTHER"),
        RequestRecord("digits", "1", "http", False, 1, 0.001, failure_reason="weird"),
        RequestRecord("nope", "", "http", False, 1, 0.001, failure_reason="OTHER"),
    ]
    batches = [BatchRecord("digits", "1", 5, 2, 0.001, 0.01, 0.001)]
    for record in (*events, *requests, *batches):
        for fn in observe:
            fn(record)
    body, content_type = monitors.render_metrics()
    assert content_type.startswith("text/plain; version=0.0.4")
    return body.decode()


def _sample(text: str, name: str, **labels: str) -> str:
    pattern = rf"^{name}\{{([^}}]*)\}} (\S+)$"
    for match in re.finditer(pattern, text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if got == labels:
            return match.group(2)
    raise AssertionError(f"no sample {name}{labels}")


def test_triton_series_names_labels_and_counting() -> None:
    text = _exposition()
    for name in TRITON_COUNTERS:
        assert f"# TYPE {name} counter" in text
        assert f"{name}_total" not in text
    assert "_created" not in text
    m = {"model": "digits", "version": "1"}
    assert _sample(text, "nv_inference_request_success", **m) == "2"  # once per request
    assert _sample(text, "nv_inference_count", **m) == "5"  # rows
    assert _sample(text, "nv_inference_exec_count", **m) == "1"  # executions
    assert _sample(text, "nv_inference_request_failure", **m, reason="REJECTED") == "1"
    assert _sample(text, "nv_inference_request_failure", **m, reason="OTHER") == "2"
    assert _sample(text, "nv_inference_request_failure", **m, reason="BACKEND") == "0"
    assert _sample(text, "nv_inference_request_duration_us", **m) == "2000004000"  # no 2e+09
    assert _sample(text, "nv_inference_queue_duration_us", **m) == "501000"
    assert _sample(text, "nv_inference_pending_request_count", **m) == "7"
    assert _sample(text, "nv_model_load_duration_secs", **m) == "1.25"
    assert _sample(text, "ferry_model_ready", **m) == "1"
    assert 'model="nope"' not in text  # unknown models do not create series
    assert not re.search(r" -?\d(\.\d+)?e\+\d+$", text, re.M)


def test_ferry_histograms() -> None:
    text = _exposition()
    m = {"model": "digits", "version": "1"}
    assert (
        _sample(text, "ferry_request_duration_seconds_bucket", **m, protocol="grpc", le="0.005")
        == "1"
    )
    assert (
        _sample(text, "ferry_request_duration_seconds_bucket", **m, protocol="http", le="60") == "0"
    )
    assert (
        _sample(text, "ferry_request_duration_seconds_bucket", **m, protocol="http", le="+Inf")
        == "1"
    )
    assert _sample(text, "ferry_batch_size_bucket", **m, le="4") == "0"
    assert _sample(text, "ferry_batch_size_bucket", **m, le="8") == "1"
    assert _sample(text, "ferry_batch_size_count", **m) == "1"
    assert _sample(text, "ferry_queue_duration_seconds_count", **m) == "2"
    assert "process_cpu_seconds_total" in text and "python_info" in text


def test_unload_removes_series_and_failed_load_reports_not_ready() -> None:
    monitors = build_monitors(drift_enabled=False)
    for record in (
        ModelEventRecord("a", "1", "READY", None, 0.1),
        ModelEventRecord("a", "1", "UNAVAILABLE", reason="unloaded"),
        ModelEventRecord("b", "1", "UNAVAILABLE", reason="model.onnx is corrupt"),
    ):
        for observer in monitors.observers:
            observer.observe(record)
    text = monitors.render_metrics()[0].decode()
    assert 'model="a"' not in text
    assert _sample(text, "ferry_model_ready", model="b", version="1") == "0"


def test_observers_never_raise() -> None:
    monitors = build_monitors(pending_requests=lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    bogus = RequestRecord("m", "1", "http", True, 1, float("nan"))
    for observer in monitors.observers:
        observer.observe(bogus)
        observer.observe(object())  # type: ignore[arg-type]
    monitors.render_metrics()  # a failing pending_requests callable is logged, not raised


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_exposition() -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=_exposition().encode(),
        capture_output=True,
        timeout=30,
    )
    problems = [
        line
        for line in result.stdout.decode().splitlines() + result.stderr.decode().splitlines()
        if line.strip()
    ]
    assert result.returncode in (0, 3), problems  # 3: lint findings only, the text parsed
    assert 'nv_inference_request_success counter metrics should have "_total" suffix' in problems
    # Triton's fixed names break three naming lints by design; anything else is a real problem.
    unexpected = [
        p
        for p in problems
        if not (p.split(" ")[0] in TRITON_NAMES and p.split(" ", 1)[1] in TRITON_NAMING_LINTS)
    ]
    assert unexpected == [], unexpected
