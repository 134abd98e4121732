"""Metric families with exact sample names, and a Prometheus text renderer with plain decimals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_value(value: float) -> str:
    """Prometheus sample value without exponent notation for large numbers (perf_analyzer-safe)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    text = repr(value)
    if "e" in text and abs(value) >= 1:
        return np.format_float_positional(value, trim="-")
    return text


class Family:
    """One metric family; samples keep the exact names given (no `_total` is appended)."""

    def __init__(self, name: str, documentation: str, kind: str) -> None:
        self.metric = Metric(name, documentation, kind)

    def add(self, labels: Mapping[str, str], value: float, suffix: str = "") -> None:
        """Add a sample named `name + suffix`."""
        self.metric.add_sample(self.metric.name + suffix, dict(labels), float(value))

    def add_histogram(
        self,
        labels: Mapping[str, str],
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """Add a classic histogram from per-bucket (non-cumulative) counts incl. the +Inf one."""
        running = 0
        for bound, count in zip([*bounds, math.inf], counts, strict=True):
            running += count
            self.add({**labels, "le": format_value(bound)}, running, "_bucket")
        self.add(labels, total, "_sum")
        self.add(labels, running, "_count")


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _type_name(metric: Metric) -> str:
    if metric.type == "counter" and any(s.name == metric.name + "_total" for s in metric.samples):
        return str(metric.name) + "_total"
    return str(metric.name)


def render(metrics: Iterable[Metric]) -> bytes:
    """Text exposition format 0.0.4 of the given metric families."""
    lines: list[str] = []
    for metric in metrics:
        kind = (
            metric.type
            if metric.type in ("counter", "gauge", "histogram", "summary")
            else "untyped"
        )
        name = _type_name(metric)
        lines.append(f"# HELP {name} {_escape(metric.documentation, False)}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{_escape(str(v), True)}"' for k, v in sample.labels.items())
            text = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{text} {format_value(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


def render_registry(registry: CollectorRegistry) -> bytes:
    """Render everything registered in `registry`."""
    return render(registry.collect())
