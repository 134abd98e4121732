"""One closed drift window's decision: per scope, drifted when any of its signals' KS statistic
is over that signal's threshold."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

SCOPES = ("outputs", "inputs")


def decide_window(
    names: Sequence[str],
    scopes: Sequence[str],
    stats: NDArray[np.float64],
    thresholds: NDArray[np.float64],
) -> tuple[dict[str, bool], list[dict[str, Any]]]:
    """The decision per scope present, and each signal's figures for the JSON detail (its
    `p_value` is None: the decision needs only the thresholds, and the channel fills p-values in
    when the record is read)."""
    drifted = stats > thresholds
    scope_of = np.array(scopes)
    decision = {
        scope: bool(np.any(drifted[scope_of == scope]))
        for scope in SCOPES
        if np.any(scope_of == scope)
    }
    signals = [
        {
            "name": name,
            "scope": scope,
            "method": "ks",
            "statistic": float(d),
            "p_value": None,
            "threshold": float(t),
            "drifted": bool(x),
        }
        for name, scope, d, t, x in zip(names, scopes, stats, thresholds, drifted, strict=True)
    ]
    return decision, signals


def window_record(
    index: int, rows: int, closed_by: str, decision: dict[str, bool], signals: list[dict[str, Any]]
) -> dict[str, Any]:
    """The `last_window` entry of the drift detail."""
    return {
        "index": index,
        "rows": rows,
        "closed_by": closed_by,
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "drift": any(decision.values()),
        "scopes": decision,
        "signals": signals,
    }
