"""The online drift monitor end to end on a real ONNX model (no server): windows, decisions."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from monitoring import build_monitors
from monitoring.drift import DriftMonitor
from monitoring.observer import ModelEventRecord, RequestRecord
from tests.unit.monitoring.conftest import Classifier, draw

WIRE_IN = {"input": ("FP32", (-1, 16))}
WIRE_OUT = {"output": ("FP32", (-1, 4))}


def ready(version_dir: Path | None, model: str = "clf") -> ModelEventRecord:
    return ModelEventRecord(
        model,
        "1",
        "READY",
        str(version_dir) if version_dir else None,
        0.1,
        inputs=WIRE_IN,
        outputs=WIRE_OUT,
        max_batch_size=8,
    )


def send(
    monitor: DriftMonitor,
    clf: Classifier,
    x: np.ndarray,
    rows_per_request: int = 4,
    model: str = "clf",
) -> None:
    y = clf.run(x)
    for start in range(0, x.shape[0], rows_per_request):
        sl = slice(start, start + rows_per_request)
        monitor.observe(
            RequestRecord(
                model,
                "1",
                "http",
                True,
                x[sl].shape[0],
                0.001,
                inputs={"input": x[sl]},
                outputs={"output": y[sl]},
            )
        )
        if start % 400 == 0:
            monitor.step()
    monitor.step()


def monitor_for(clf: Classifier, **kwargs: object) -> DriftMonitor:
    monitor = DriftMonitor(window=200, alpha=0.05, **kwargs)  # type: ignore[arg-type]
    monitor.observe(ready(clf.version_dir))
    monitor.step()
    return monitor


def test_unshifted_traffic_mostly_passes_and_shift_is_detected(classifier: Classifier) -> None:
    rng = np.random.default_rng(10)
    monitor = monitor_for(classifier)
    send(monitor, classifier, draw(rng, 2000))
    detail = monitor.detail("clf", None)
    assert detail is not None and detail["state"] == "active"
    assert detail["windows_total"] == 10
    assert sum(detail["detections_total"].values()) <= 2  # alpha 0.05 per window
    send(monitor, classifier, draw(rng, 400, shift=0.5))
    detail = monitor.detail("clf", "1")
    assert detail is not None and detail["windows_total"] == 12
    last = detail["last_window"]
    assert last["drift"] and last["scopes"] == {"outputs": True, "inputs": True}
    assert detail["consecutive_detections"]["inputs"] >= 2
    drifted = {s["name"] for s in last["signals"] if s["drifted"]}
    assert any(n.startswith("input.x") for n in drifted)
    for signal in last["signals"]:
        assert signal["drifted"] == (signal["statistic"] > signal["threshold"])
        if abs(signal["p_value"] / detail["alpha_per_signal"] - 1) > 0.01:  # isf precision
            assert signal["drifted"] == (signal["p_value"] < detail["alpha_per_signal"])


def test_nan_rows_are_counted_not_used(classifier: Classifier) -> None:
    rng = np.random.default_rng(11)
    monitor = monitor_for(classifier)
    x = draw(rng, 230)
    x[::10, 3] = np.nan
    x[5, 0] = np.inf
    send(monitor, classifier, x)
    detail = monitor.detail("clf", "1")
    assert detail is not None
    assert detail["nonfinite_rows"] == 24
    assert detail["windows_total"] == 1 and detail["open_window_rows"] == 6
    assert all(np.isfinite(s["p_value"]) for s in detail["last_window"]["signals"])


def test_full_intake_drops_and_counts(classifier: Classifier) -> None:
    monitor = monitor_for(classifier)
    x = draw(np.random.default_rng(12), 1)
    y = classifier.run(x)
    for _ in range(1500):  # no worker step: the intake (2 x window, at least 1024 rows) fills
        monitor.observe(
            RequestRecord(
                "clf", "1", "grpc", True, 1, 0.001, inputs={"input": x}, outputs={"output": y}
            )
        )
    monitor.step()
    detail = monitor.detail("clf", "1")
    assert detail is not None and detail["dropped_rows"] == 1500 - 1024
    assert detail["rows_seen"] == 1024


def test_a_sample_rate_monitors_that_fraction_of_requests(classifier: Classifier) -> None:
    monitor = monitor_for(classifier, sample_rate=0.5)
    x = draw(np.random.default_rng(13), 1)
    y = classifier.run(x)
    for index in range(800):
        monitor.observe(
            RequestRecord(
                "clf", "1", "http", True, 1, 0.001, inputs={"input": x}, outputs={"output": y}
            )
        )
        if index % 100 == 99:
            monitor.step()
    detail = monitor.detail("clf", "1")
    assert detail is not None
    assert (detail["rows_seen"], detail["windows_total"], detail["dropped_rows"]) == (400, 2, 0)


def test_model_without_reference_has_no_drift_series(
    classifier: Classifier, caplog: pytest.LogCaptureFixture
) -> None:
    monitors = build_monitors(drift_window=200)
    with caplog.at_level(logging.INFO, logger="ferry.monitoring.drift"):
        for observer in monitors.observers:
            observer.observe(ready(classifier.version_dir.parent, model="plain"))
        monitors.drift.step()
    detail = monitors.drift_detail("plain", None)
    assert detail is not None and detail["state"] == "disabled"
    assert "no reference.npz" in detail["reason"] and "no reference.npz" in caplog.text
    text = monitors.render_metrics()[0].decode()
    assert "ferry_drift_score" not in text
    assert 'ferry_drift_enabled{model="plain",version="1"} 0' in text
    assert monitors.drift_detail("unknown", None) is None
    assert monitors.drift_detail("plain", "9") is None


def test_corrupt_reference_disables_drift_and_says_why(
    classifier: Classifier,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "reference.npz").write_bytes(b"\x00garbage")
    monitor = DriftMonitor(window=200)
    with caplog.at_level(logging.WARNING, logger="ferry.monitoring.drift"):
        monitor.observe(ready(tmp_path))
        monitor.step()
    detail = monitor.detail("clf", "1")
    assert detail is not None and detail["state"] == "disabled"
    assert "reference unusable" in detail["reason"] and "not a readable .npz" in caplog.text
    send(monitor, classifier, draw(np.random.default_rng(1), 8))  # still observes quietly


def test_rebaseline_from_production(classifier: Classifier) -> None:
    rng = np.random.default_rng(13)
    monitor = DriftMonitor(window=200, baseline_samples=1000)
    monitor.observe(ready(None))  # no reference.npz: signals from the wire specs
    monitor.step()
    assert monitor.detail("clf", "1")["state"] == "baselining"  # type: ignore[index]
    send(monitor, classifier, draw(rng, 1000, shift=0.5))  # production differs from training
    send(monitor, classifier, draw(rng, 400, shift=0.5))
    detail = monitor.detail("clf", "1")
    assert detail is not None and detail["state"] == "active"
    assert detail["reference"] == {
        "source": "first 1000 production rows",
        "created": detail["reference"]["created"],
        "rows": 1000,
    }
    assert detail["windows_total"] == 2
    assert sum(detail["detections_total"].values()) <= 1  # the shifted data is the new normal


def test_unavailable_version_is_forgotten(classifier: Classifier) -> None:
    monitor = monitor_for(classifier)
    monitor.observe(ModelEventRecord("clf", "1", "UNAVAILABLE"))
    assert monitor.detail("clf", None) is None


def test_worker_thread_evaluates_and_metrics_show_it(classifier: Classifier) -> None:
    monitors = build_monitors(drift_window=200, drift_alpha=0.05)
    monitors.start()
    try:
        for observer in monitors.observers:
            observer.observe(ready(classifier.version_dir))
        time.sleep(0.5)
        x = draw(np.random.default_rng(14), 400, shift=1.0)
        y = classifier.run(x)
        for i in range(0, 400, 8):
            record = RequestRecord(
                "clf",
                "1",
                "http",
                True,
                8,
                0.001,
                inputs={"input": x[i : i + 8]},
                outputs={"output": y[i : i + 8]},
            )
            for observer in monitors.observers:
                observer.observe(record)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            detail = monitors.drift_detail("clf", None)
            if detail and detail["windows_total"] == 2:
                break
            time.sleep(0.05)
        text = monitors.render_metrics()[0].decode()
    finally:
        monitors.close()
    m = 'model="clf",version="1"'
    assert f"ferry_drift_windows_total{{{m}}} 2" in text
    assert f'ferry_drift_detected{{{m},scope="inputs"}} 1' in text
    assert f'ferry_drift_detections_total{{{m},scope="inputs"}} 2' in text
    assert f"ferry_drift_window_samples{{{m}}} 200" in text
    assert f'ferry_drift_p_value{{{m},signal="input.x0"}}' in text
    assert f'ferry_drift_score{{{m},signal="output.p0",method="ks"}}' in text
    assert f'ferry_prediction_class_total{{{m},class="0"}}' in text
    assert "ferry_drift_last_evaluation_timestamp_seconds{" in text
