"""Two-sample Kolmogorov-Smirnov tests against a pre-sorted reference, and their calibration."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.stats import distributions

FloatArray = NDArray[np.float64]


def effective_size(n: int, m: int) -> float:
    """Smirnov's effective sample size n*m/(n+m), rounded as scipy's asymptotic test does."""
    big, small = max(n, m), min(n, m)
    return float(np.round(big * small / (big + small)))


def ks_statistic(sorted_reference: NDArray[np.floating], window: NDArray[np.floating]) -> float:
    """Two-sided KS distance D of a window from a sorted reference (scipy's definition)."""
    window_sorted = np.sort(window)
    both = np.concatenate([sorted_reference, window_sorted])
    cdf_ref = np.searchsorted(sorted_reference, both, side="right") / sorted_reference.size
    cdf_win = np.searchsorted(window_sorted, both, side="right") / window_sorted.size
    return float(np.max(np.abs(cdf_ref - cdf_win)))


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of D for sizes n, m (scipy ks_2samp method='asymp')."""
    return float(np.clip(distributions.kstwo.sf(statistic, effective_size(n, m)), 0.0, 1.0))


def ks_threshold(alpha: float, n: int, m: int) -> float:
    """Critical distance: D above this has an asymptotic p-value below `alpha`."""
    return float(distributions.kstwo.isf(alpha, effective_size(n, m)))


def window_p_values(
    sorted_reference: FloatArray, window: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Per-signal D and p-value for a window (rows x signals) against sorted reference columns."""
    signals = window.shape[1]
    stats = np.empty(signals)
    p_values = np.empty(signals)
    for j in range(signals):
        stats[j] = ks_statistic(sorted_reference[:, j], window[:, j])
        p_values[j] = ks_p_value(stats[j], sorted_reference.shape[0], window.shape[0])
    return stats, p_values


def calibrate_signal_alpha(
    samples: FloatArray, window: int, alpha: float, simulations: int = 400, seed: int = 0,
    max_reference: int = 2000,
) -> float:
    """Per-signal p-value cut that gives a family-wise false-alarm rate of `alpha` per window.

    Bonferroni (alpha/K) is the floor; signals are correlated (class probabilities sum to one),
    so the alpha-quantile of the window's smallest p-value under exchangeability is usually
    larger. Simulated windows are drawn without replacement from the reference, and compared
    with the rest of it.
    """
    rows, signals = samples.shape
    bonferroni = float(alpha / signals)
    window = min(window, rows // 2)
    if window < 20 or rows - window < 20:
        return bonferroni
    rng = np.random.default_rng(seed)
    min_p = np.empty(simulations)
    for b in range(simulations):
        order = rng.permutation(rows)
        test = samples[order[:window]]
        rest = samples[order[window : window + max_reference]]
        _, p_values = window_p_values(np.sort(rest, axis=0), test)
        min_p[b] = p_values.min()
    quantile = float(np.quantile(min_p, alpha, method="lower"))
    return float(np.clip(quantile, bonferroni, alpha))
