"""One model version's drift state: a bounded intake, signal computation, windows, KS decisions."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitoring.drift_decision import decide_window, window_record
from monitoring.drift_intake import Item, RowIntake, pending_rows_for, stack_groups
from monitoring.ks import calibrate_signal_alpha, ks_p_values, ks_threshold, window_statistics
from monitoring.observer import RequestRecord
from monitoring.reference import Reference
from monitoring.signals import SignalError, SignalSpec, compute_signals, predicted_classes
from monitoring.window import TumblingWindow

log = logging.getLogger("ferry.monitoring.drift")
FloatArray = NDArray[np.float64]
# signals are computed this many rows at a time: their temporaries stay in the CPU's caches (3,000
# rows at once cost 1.6 x per row on this machine, and more beside a busy server)
SIGNAL_CHUNK_ROWS = 512


class DriftChannel:
    """Drift state of one model version; `offer` runs on the server loop, the rest on a worker."""

    def __init__(
        self,
        model: str,
        version: str,
        window: int,
        alpha: float,
        batched: bool,
        max_age_s: float = 600.0,
        sample_rate: float = 1.0,
    ) -> None:
        self.model, self.version, self.window_size, self.alpha = model, version, window, alpha
        self.batched = batched
        self.max_age_s = max_age_s
        self.state, self.reason, self.source = "loading", "", ""
        self.intake = RowIntake(pending_rows_for(window), sample_rate=sample_rate)
        self.dropped_elsewhere = 0  # rows a remote feeder could not send (drift_remote.py)
        self.nonfinite_rows = self.skipped_rows = self.rows_seen = 0
        self.spec: SignalSpec | None = None
        self.window: TumblingWindow | None = None
        self.sorted_reference: FloatArray | None = None
        self.alpha_signal = 0.0
        self.thresholds: FloatArray | None = None
        self.reference_created = ""
        self.baseline_target = 0
        self._baseline: list[FloatArray] = []
        self.windows_total = 0
        self.detections_total: dict[str, int] = {}
        self.consecutive: dict[str, int] = {}
        # the last window's record, with what its p-values need while they are not computed
        self._last: tuple[dict[str, Any], FloatArray | None, int, int] | None = None
        self.last_evaluation_s = 0.0
        self.class_counts: NDArray[np.int64] = np.zeros(0, dtype=np.int64)

    # -- loop thread -------------------------------------------------------------------------
    def offer(self, record: RequestRecord) -> bool:
        """Queue a request's rows (or count them dropped when full); True when a drain is due."""
        if self.state not in ("active", "baselining") or record.outputs is None:
            return False
        return self.intake.offer(
            record.inputs or {}, record.outputs, max(1, record.batch_size), self.batched
        )

    @property
    def dropped_rows(self) -> int:
        """Rows never monitored because evaluation fell behind."""
        return self.intake.dropped_rows + self.dropped_elsewhere

    # -- worker thread -----------------------------------------------------------------------
    def activate(
        self,
        spec: SignalSpec,
        reference: Reference | None,
        baseline_rows: int,
        thresholds: tuple[float, FloatArray] | None,
    ) -> None:
        """Start monitoring with a stored reference, or start collecting a production baseline."""
        self.spec = spec
        self.class_counts = np.zeros(0, dtype=np.int64)
        if baseline_rows > 0:
            self.baseline_target, self.state = baseline_rows, "baselining"
            self.source = f"first {baseline_rows} production rows"
            return
        assert reference is not None and thresholds is not None
        self.reference_created = reference.created
        self._use_reference(reference.sorted_samples, *thresholds)
        self.source = "reference.npz"

    def disable(self, reason: str) -> None:
        """Stop monitoring this version, keeping the reason for the JSON detail."""
        self.state, self.reason = "disabled", reason
        self.intake.take()

    def _use_reference(
        self, sorted_samples: FloatArray, alpha_signal: float, thresholds: FloatArray
    ) -> None:
        assert self.spec is not None
        self.sorted_reference = np.asfortranarray(sorted_samples)  # contiguous columns for KS
        self.alpha_signal, self.thresholds = alpha_signal, thresholds
        self.window = TumblingWindow(self.window_size, len(self.spec.names), self.max_age_s)
        self.state = "active"

    def drain(self, items: list[Item] | None = None) -> None:
        """Compute signals for queued rows (and `items`, rows that came from elsewhere), feed
        the window and evaluate completed windows."""
        items = [*self.intake.take(), *(items or [])]
        if items and self.spec is not None and self.state in ("active", "baselining"):
            for rows in self._signal_rows(items):
                self._take(rows)
        if self.window is not None and self.state == "active":
            stale = self.window.close_if_stale()
            if stale is not None:
                self._evaluate(stale, "stale")

    def _signal_rows(self, items: list[Item]) -> list[FloatArray]:
        assert self.spec is not None
        groups, skipped = stack_groups(items, self.spec.tensors)
        self.skipped_rows += skipped
        result = []
        for inputs, outputs, rows in groups:
            for start in range(0, rows, SIGNAL_CHUNK_ROWS):
                chunk = min(SIGNAL_CHUNK_ROWS, rows - start)
                if chunk < rows:
                    inputs_chunk = {n: a[start : start + chunk] for n, a in inputs.items()}
                    outputs_chunk = {n: a[start : start + chunk] for n, a in outputs.items()}
                else:
                    inputs_chunk, outputs_chunk = inputs, outputs
                try:
                    signals = compute_signals(self.spec, inputs_chunk, outputs_chunk)
                except (SignalError, ValueError, IndexError):
                    self.skipped_rows += chunk
                    continue
                self._count_classes(outputs_chunk)
                finite = np.isfinite(signals).all(axis=1)
                self.nonfinite_rows += int(chunk - finite.sum())
                self.rows_seen += chunk
                result.append(signals[finite])
        return result

    def _count_classes(self, outputs: Mapping[str, np.ndarray]) -> None:
        assert self.spec is not None
        classes = predicted_classes(self.spec, outputs)
        if classes.size:
            counts = np.bincount(classes)
            if counts.size > self.class_counts.size:
                grow = counts.size - self.class_counts.size
                self.class_counts = np.pad(self.class_counts, (0, grow))
            self.class_counts[: counts.size] += counts

    def _take(self, rows: FloatArray) -> None:
        if self.state == "baselining":
            have = sum(b.shape[0] for b in self._baseline)
            need = self.baseline_target - have
            self._baseline.append(rows[:need])
            rows = rows[need:]
            if have + self._baseline[-1].shape[0] >= self.baseline_target:
                self._finish_baseline()
        if self.state == "active" and self.window is not None and rows.shape[0]:
            for full in self.window.add(rows):
                self._evaluate(full, "full")

    def _finish_baseline(self) -> None:
        assert self.spec is not None
        samples = np.concatenate(self._baseline)
        self._baseline = []
        alpha_signal = calibrate_signal_alpha(
            samples, self.window_size, self.alpha, simulations=200
        )
        thresholds = np.full(
            len(self.spec.names), ks_threshold(alpha_signal, self.window_size, samples.shape[0])
        )
        self.reference_created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._use_reference(np.sort(samples, axis=0), alpha_signal, thresholds)
        log.info(
            "drift baseline for %s/%s taken from %d production rows",
            self.model,
            self.version,
            samples.shape[0],
        )

    def _evaluate(self, rows: FloatArray, closed_by: str) -> None:
        assert self.sorted_reference is not None and self.thresholds is not None
        assert self.spec is not None
        stats = window_statistics(self.sorted_reference, rows)
        n, m = rows.shape[0], self.sorted_reference.shape[0]
        thresholds = (
            self.thresholds
            if n == self.window_size
            else np.full(stats.size, ks_threshold(self.alpha_signal, n, m))
        )
        self.windows_total += 1
        self.last_evaluation_s = time.time()
        decision, signals = decide_window(self.spec.names, self.spec.scopes, stats, thresholds)
        for scope, drifted in decision.items():
            self.detections_total[scope] = self.detections_total.get(scope, 0) + int(drifted)
            self.consecutive[scope] = self.consecutive.get(scope, 0) + 1 if drifted else 0
            if drifted and self.consecutive[scope] == 1:  # once per run of drifted windows
                self._log_detection(scope, rows.shape[0], signals)
        record = window_record(self.windows_total, rows.shape[0], closed_by, decision, signals)
        self._last = (record, stats, n, m)

    @property
    def last(self) -> dict[str, Any] | None:
        """The last window's record. Its p-values are computed at the first read, not for every
        window: scipy's kstwo.sf is half of a window's evaluation cost, and at a window every
        0.1 s most records are never read (a scrape reads one a second at most)."""
        last = self._last  # one read: the drift thread replaces the whole tuple
        if last is None:
            return None
        record, stats, n, m = last
        if stats is None:
            return record
        p_values = ks_p_values(stats, m, n)
        signals = [
            {**signal, "p_value": float(p)}
            for signal, p in zip(record["signals"], p_values, strict=True)
        ]
        complete = {**record, "signals": signals}
        if self._last is last:  # else a newer window came meanwhile; this reader keeps its own
            self._last = (complete, None, n, m)
        return complete

    def _log_detection(self, scope: str, rows: int, signals: list[dict[str, Any]]) -> None:
        """One WARNING when a scope starts drifting (not one per window: at load a window closes
        every fraction of a second), naming its most shifted signals."""
        shifted = sorted(
            (s for s in signals if s["scope"] == scope and s["drifted"]),
            key=lambda s: s["statistic"] - s["threshold"],
            reverse=True,
        )
        log.warning(
            "drift detected for %s/%s (%s) in window %d of %d rows: %s",
            self.model,
            self.version,
            scope,
            self.windows_total,
            rows,
            ", ".join(
                f"{s['name']} (KS {s['statistic']:.3f} > {s['threshold']:.3f})" for s in shifted[:3]
            )
            + (f" and {len(shifted) - 3} more" if len(shifted) > 3 else ""),
        )
