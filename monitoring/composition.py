"""The monitors `ferry serve` runs: Prometheus metrics and drift, behind one small facade."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from monitoring.drift import DriftMonitor
from monitoring.drift_remote import DriftServiceAddress, DriftSettings, feeder_for
from monitoring.families import CONTENT_TYPE, Family, render_registry
from monitoring.loop_lag import LoopLagProbe
from monitoring.metrics import CacheTotals, PendingCounts, SequenceCounts, ServingMetrics
from monitoring.observer import InferenceObserver, ObservedRecord

log = logging.getLogger("ferry.monitoring.drift")


class DriftObserver(Protocol):
    """Drift monitoring as the server sees it: evaluated on a thread (`DriftMonitor`) or in the
    evaluator process (`RemoteDriftMonitor`)."""

    def observe(self, record: ObservedRecord) -> None: ...

    def detail(self, model: str, version: str | None) -> dict[str, Any] | None: ...

    def families(self) -> list[Family]: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def step(self) -> None: ...


class _FerryCollector(Collector):
    """Collects serving and drift families on each scrape."""

    def __init__(
        self, metrics: ServingMetrics, drift: DriftObserver, loop_lag: LoopLagProbe | None
    ) -> None:
        self._metrics, self._drift, self._loop_lag = metrics, drift, loop_lag

    def collect(self) -> Iterable[Metric]:
        for family in (*self._metrics.families(), *self._drift.families()):
            yield family.metric
        if self._loop_lag is not None:
            for family in self._loop_lag.families():
                yield family.metric


class Monitors:
    """What the server wires in: observers, a metrics renderer, drift detail, start/close."""

    def __init__(
        self, metrics: ServingMetrics, drift: DriftObserver, loop_lag: LoopLagProbe | None = None
    ) -> None:
        from prometheus_client import gc_collector, platform_collector, process_collector

        self.metrics, self.drift, self.loop_lag = metrics, drift, loop_lag
        self.observers: list[InferenceObserver] = [metrics, drift]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_FerryCollector(metrics, drift, loop_lag))
        # The client library's default process/platform/GC collectors, on our own registry.
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)

    def start(self) -> None:
        """Start background workers (and the loop-lag probe, on the running event loop)."""
        self.drift.start()
        if self.loop_lag is not None:
            self.loop_lag.start()

    def close(self) -> None:
        """Stop background workers."""
        if self.loop_lag is not None:
            self.loop_lag.stop()
        self.drift.close()

    def render_metrics(self) -> tuple[bytes, str]:
        """Prometheus text exposition and its content type."""
        return render_registry(self.registry), CONTENT_TYPE

    def drift_detail(self, model: str, version: str | None) -> dict[str, Any] | None:
        """Drift JSON of a model (version); None when the model version is not known."""
        return self.drift.detail(model, version)


def build_monitors(
    pending_requests: PendingCounts | None = None,
    sequence_counts: SequenceCounts | None = None,
    drift_enabled: bool = True,
    drift_window: int = 1000,
    drift_alpha: float = 0.05,
    drift_baseline_samples: int = 0,
    drift_max_window_age_s: float = 600.0,
    loop_lag_probe: bool = False,
    cache_totals: CacheTotals | None = None,
    drift_process: bool = False,
    drift_service: DriftServiceAddress | None = None,
    drift_sample_rate: float = 1.0,
) -> Monitors:
    """Build the metrics and drift observers with the server's settings. Drift windows are
    evaluated on a thread of this process, or with `drift_process` in an evaluator process:
    this process's own, or the shared one at `drift_service` (a worker of `--workers N`)."""
    if (
        drift_window < 2
        or not 0.0 < drift_alpha < 1.0
        or drift_baseline_samples < 0
        or not 0.0 < drift_sample_rate <= 1.0
    ):
        raise ValueError(
            "need --drift-window >= 2, 0 < --drift-alpha < 1, --drift-baseline-samples >= 0, "
            "0 < --drift-sample-rate <= 1"
        )
    drift: DriftObserver | None = None
    if drift_enabled and (drift_process or drift_service is not None):
        settings = DriftSettings(
            drift_window, drift_alpha, drift_baseline_samples, drift_max_window_age_s
        )
        try:
            drift = feeder_for(drift_service, settings, drift_sample_rate)
        except OSError as exc:  # no writable temporary folder for the evaluator's socket
            log.warning("drift evaluated on a thread: cannot start the evaluator (%s)", exc)
    if drift is None:
        drift = DriftMonitor(
            drift_enabled,
            drift_window,
            drift_alpha,
            drift_baseline_samples,
            drift_max_window_age_s,
            sample_rate=drift_sample_rate,
        )
    return Monitors(
        ServingMetrics(pending_requests, sequence_counts, cache_totals),
        drift,
        LoopLagProbe() if loop_lag_probe else None,
    )
