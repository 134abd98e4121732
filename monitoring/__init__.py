"""Monitoring: Triton-compatible metrics, online drift detection, dashboards and alert rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitoring.composition import Monitors


def build_monitors(**settings: Any) -> Monitors:
    """Metrics + drift monitors for `ferry serve` (see monitoring.composition.build_monitors)."""
    from monitoring.composition import build_monitors as build

    return build(**settings)


__all__ = ["build_monitors"]
