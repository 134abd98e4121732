"""The online drift monitor: an observer that queues rows; a worker thread evaluates them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.drift_channel import DriftChannel
from monitoring.drift_report import channel_detail, channel_series
from monitoring.families import Family
from monitoring.observer import ModelEventRecord, ObservedRecord, RequestRecord
from monitoring.polling_thread import PollingThread
from monitoring.reference import REFERENCE_FILENAME, load_reference, thresholds_for
from monitoring.signals import SignalError, build_spec, datatype_kind
from monitoring.tensors import ReferenceDataError

log = logging.getLogger("ferry.monitoring.drift")

DRIFT_FAMILIES = {
    "ferry_drift_enabled": ("1 when drift monitoring of this model version is active.", "gauge"),
    "ferry_drift_score": (
        "Drift statistic of the last window per signal (KS distance D).",
        "gauge",
    ),
    "ferry_drift_threshold": ("Statistic above which a signal counts as drifted.", "gauge"),
    "ferry_drift_p_value": ("p-value of the last window's two-sample KS test per signal.", "gauge"),
    "ferry_drift_detected": (
        "1 when the last window drifted in this scope (after correction).",
        "gauge",
    ),
    "ferry_drift_consecutive_windows": ("Consecutive windows that drifted in this scope.", "gauge"),
    "ferry_drift_window_samples": ("Rows in the last evaluated window.", "gauge"),
    "ferry_drift_open_window_samples": ("Rows in the window being filled.", "gauge"),
    "ferry_drift_reference_samples": ("Rows in the drift reference sample.", "gauge"),
    "ferry_drift_windows_total": ("Drift windows evaluated.", "counter"),
    "ferry_drift_detections_total": ("Windows that drifted, per scope.", "counter"),
    "ferry_drift_last_evaluation_timestamp_seconds": ("Unix time of the last evaluation.", "gauge"),
    "ferry_drift_dropped_rows_total": (
        "Rows not monitored because evaluation fell behind.",
        "counter",
    ),
    "ferry_drift_nonfinite_rows_total": (
        "Rows left out of drift windows for NaN/Inf signals.",
        "counter",
    ),
    "ferry_prediction_class_total": ("Predicted (top-1) class of monitored rows.", "counter"),
}


@dataclass
class DriftSnapshot:
    """What readers of drift see (Prometheus families, JSON detail), computed where the windows
    are evaluated; `tensors` names the tensors each model version's signals read."""

    families: list[Family] = field(default_factory=list)
    details: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tensors: dict[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)


def latest_version(versions: Iterable[str]) -> str:
    """The version a drift read without a version means: the highest numbered one."""
    return max(versions, key=lambda v: (v.isdigit(), int(v) if v.isdigit() else 0, v))


def pick_detail(
    details: Mapping[tuple[str, str], dict[str, Any]], model: str, version: str | None
) -> dict[str, Any] | None:
    """The detail of `model`'s `version` (its latest one when None); None when unknown."""
    versions = [v for (m, v) in details if m == model]
    if version is None and versions:
        version = latest_version(versions)
    return details.get((model, version)) if version is not None else None


class DriftMonitor:
    """Observer for drift; `observe` only queues, a daemon thread computes and evaluates."""

    def __init__(
        self,
        enabled: bool = True,
        window: int = 1000,
        alpha: float = 0.05,
        baseline_samples: int = 0,
        max_window_age_s: float = 600.0,
        poll_s: float = 0.2,
        sample_rate: float = 1.0,
    ) -> None:
        self.enabled, self.window, self.alpha = enabled, window, alpha
        self.sample_rate = sample_rate  # of requests queued (RowIntake)
        self.baseline_samples, self.max_window_age_s, self.poll_s = (
            baseline_samples,
            max_window_age_s,
            poll_s,
        )
        self._channels: dict[tuple[str, str], DriftChannel] = {}
        self._to_load: list[tuple[DriftChannel, ModelEventRecord]] = []
        self._lock = threading.Lock()
        self._thread = PollingThread("ferry-drift", self.step, poll_s)

    def observe(self, record: ObservedRecord) -> None:
        """Queue rows of a successful request; register model versions as they become ready."""
        try:
            if isinstance(record, RequestRecord):
                if record.success:
                    channel = self._channels.get((record.model, record.version))
                    if channel is not None and channel.offer(record):
                        self._thread.wake()
            elif isinstance(record, ModelEventRecord):
                self._on_event(record)
        except Exception:  # an observer never raises into the server
            log.exception("drift monitor failed to observe a record")

    def _on_event(self, event: ModelEventRecord) -> None:
        key = (event.model, event.version)
        with self._lock:
            if event.state != "READY":
                self._channels.pop(key, None)
                return
            channel = DriftChannel(
                event.model,
                event.version,
                self.window,
                self.alpha,
                event.max_batch_size > 0,
                self.max_window_age_s,
                self.sample_rate,
            )
            self._channels[key] = channel
            self._to_load.append((channel, event))
        self._thread.wake()

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the worker thread."""
        self._thread.stop()

    def step(self) -> None:
        """One worker pass: load new versions, drain every channel (public for tests)."""
        with self._lock:
            to_load, self._to_load = self._to_load, []
        for channel, event in to_load:
            self._load(channel, event)
        for channel in list(self._channels.values()):
            try:
                channel.drain()
            except Exception as exc:
                log.exception("drift evaluation of %s/%s failed", channel.model, channel.version)
                channel.disable(f"evaluation failed: {exc}")

    def _load(self, channel: DriftChannel, event: ModelEventRecord) -> None:
        name = f"{event.model}/{event.version}"
        if not self.enabled:
            channel.disable("drift detection is off (ferry serve --no-drift)")
            return
        path = Path(event.version_path) / REFERENCE_FILENAME if event.version_path else None
        try:
            if path is not None and path.is_file():
                reference = load_reference(path)
                thresholds = thresholds_for(reference, self.window, self.alpha)
                channel.activate(reference.spec, reference, self.baseline_samples, thresholds)
            elif self.baseline_samples > 0:
                channel.activate(self._spec_from_wire(event), None, self.baseline_samples, None)
            else:
                channel.disable(
                    f"no {REFERENCE_FILENAME} in the version folder (build one "
                    "with `ferry drift reference`)"
                )
                log.info("drift monitoring off for %s: %s", name, channel.reason)
                return
        except (ReferenceDataError, SignalError, OSError) as exc:
            channel.disable(f"reference unusable: {exc}")
            log.warning("drift monitoring off for %s: %s", name, channel.reason)
            return
        log.info(
            "drift monitoring on for %s (%s, %d signals, window %d, alpha %g)",
            name,
            channel.source,
            len(channel.spec.names) if channel.spec else 0,
            self.window,
            self.alpha,
        )

    @staticmethod
    def _spec_from_wire(event: ModelEventRecord) -> Any:
        batched = event.max_batch_size > 0

        def rows(specs: Any) -> dict[str, tuple[str, tuple[int, ...]]]:
            return {
                n: (datatype_kind(dt), tuple(shape[1:] if batched else shape))
                for n, (dt, shape) in (specs or {}).items()
            }

        return build_spec(rows(event.inputs), rows(event.outputs), {})

    def detail(self, model: str, version: str | None) -> dict[str, Any] | None:
        """Per-signal JSON of a model version (latest version when None); None when unknown."""
        channels = {key: c for key, c in list(self._channels.items()) if key[0] == model}
        if not channels:
            return None
        chosen = version if version is not None else latest_version(v for _, v in channels)
        channel = channels.get((model, chosen))
        return None if channel is None else channel_detail(channel)

    def offer_rows(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        rows: int,
        dropped_elsewhere: int,
        skipped: int = 0,
    ) -> None:
        """Evaluate rows that arrive stacked (one leading row axis) from a remote feeder, now,
        on the calling thread; `dropped_elsewhere` is the feeder's running count of rows it
        could not send, `skipped` the rows it could not stack in this pass."""
        channel = self._channels.get((model, version))
        if channel is None:
            return
        channel.dropped_elsewhere = dropped_elsewhere
        channel.skipped_rows += skipped
        try:
            channel.drain([(inputs, outputs, rows, True)] if rows else None)
        except Exception as exc:
            log.exception("drift evaluation of %s/%s failed", model, version)
            channel.disable(f"evaluation failed: {exc}")

    def snapshot(self) -> DriftSnapshot:
        """Every model version's families, detail and signal tensors, as of now."""
        channels = list(self._channels.items())
        return DriftSnapshot(
            self.families(),
            {key: channel_detail(c) for key, c in channels},
            {key: c.spec.tensors for key, c in channels if c.spec is not None},
        )

    def families(self) -> list[Family]:
        """The drift series of every monitored model version."""
        families = {n: Family(n, doc, kind) for n, (doc, kind) in DRIFT_FAMILIES.items()}
        for channel in list(self._channels.values()):
            channel_series(channel, families)
        return [f for f in families.values() if f.metric.samples]
