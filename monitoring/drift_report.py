"""A model version's drift: its JSON detail and its Prometheus series."""

from __future__ import annotations

import math
from typing import Any

from monitoring.drift_channel import DriftChannel
from monitoring.families import Family


def channel_detail(channel: DriftChannel) -> dict[str, Any]:
    """JSON for GET /v2/models/{name}/versions/{v}/drift."""
    spec = channel.spec
    n_signals = len(spec.names) if spec else 0
    bonferroni = channel.alpha / n_signals if n_signals else None
    return {
        "model": channel.model,
        "version": channel.version,
        "state": channel.state,
        "reason": channel.reason,
        "method": "two-sample Kolmogorov-Smirnov per signal",
        "correction": "bonferroni"
        if channel.alpha_signal == bonferroni
        else "calibrated (min-p under exchangeability, floor bonferroni)",
        "window_size": channel.window_size,
        "alpha": channel.alpha,
        "alpha_per_signal": channel.alpha_signal or bonferroni,
        "bonferroni_alpha": bonferroni,
        "reference": {
            "source": channel.source,
            "created": channel.reference_created,
            "rows": 0
            if channel.sorted_reference is None
            else int(channel.sorted_reference.shape[0]),
        },
        "signals": [{"name": n, "scope": s} for n, s in zip(spec.names, spec.scopes, strict=True)]
        if spec
        else [],
        "open_window_rows": channel.window.filled if channel.window else 0,
        "rows_seen": channel.rows_seen,
        "dropped_rows": channel.dropped_rows,
        "nonfinite_rows": channel.nonfinite_rows,
        "skipped_rows": channel.skipped_rows,
        "windows_total": channel.windows_total,
        "detections_total": dict(channel.detections_total),
        "consecutive_detections": dict(channel.consecutive),
        "last_window": channel.last,
    }


def channel_series(channel: DriftChannel, families: dict[str, Family]) -> None:
    """Add this channel's ferry_drift_* and ferry_prediction_class_total samples."""
    base = {"model": channel.model, "version": channel.version}
    families["ferry_drift_enabled"].add(base, 1.0 if channel.state == "active" else 0.0)
    if channel.state == "disabled":
        return
    families["ferry_drift_dropped_rows_total"].add(base, channel.dropped_rows)
    families["ferry_drift_nonfinite_rows_total"].add(base, channel.nonfinite_rows)
    for cls, count in enumerate(channel.class_counts.tolist()):
        families["ferry_prediction_class_total"].add({**base, "class": str(cls)}, count)
    if channel.state != "active" or channel.spec is None:
        return
    assert channel.sorted_reference is not None and channel.window is not None
    families["ferry_drift_reference_samples"].add(base, channel.sorted_reference.shape[0])
    families["ferry_drift_open_window_samples"].add(base, channel.window.filled)
    families["ferry_drift_windows_total"].add(base, channel.windows_total)
    scopes = dict.fromkeys(channel.spec.scopes)
    for scope in scopes:
        labels = {**base, "scope": scope}
        families["ferry_drift_detections_total"].add(labels, channel.detections_total.get(scope, 0))
    if channel.last is None:
        return
    families["ferry_drift_window_samples"].add(base, channel.last["rows"])
    families["ferry_drift_last_evaluation_timestamp_seconds"].add(base, channel.last_evaluation_s)
    for scope, detected in channel.last["scopes"].items():
        labels = {**base, "scope": scope}
        families["ferry_drift_detected"].add(labels, 1.0 if detected else 0.0)
        families["ferry_drift_consecutive_windows"].add(labels, channel.consecutive.get(scope, 0))
    for signal in channel.last["signals"]:
        labels = {**base, "signal": signal["name"]}
        families["ferry_drift_score"].add({**labels, "method": "ks"}, signal["statistic"])
        families["ferry_drift_threshold"].add({**labels, "method": "ks"}, signal["threshold"])
        families["ferry_drift_p_value"].add(
            labels, signal["p_value"] if math.isfinite(signal["p_value"]) else 1.0
        )
