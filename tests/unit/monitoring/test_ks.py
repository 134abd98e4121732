"""KS statistic, p-value, threshold and calibration, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitoring.ks import (
    calibrate_signal_alpha,
    ks_p_value,
    ks_statistic,
    ks_threshold,
    window_p_values,
    window_statistics,
)


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
@pytest.mark.parametrize(("n", "m"), [(1000, 100), (500, 200), (3000, 1000)])
def test_statistic_and_p_value_match_scipy_asymptotic(shift: float, n: int, m: int) -> None:
    rng = np.random.default_rng(n + m)
    reference, window = rng.standard_normal(n), rng.standard_normal(m) + shift
    expected = stats.ks_2samp(reference, window, method="asymp")
    d = ks_statistic(np.sort(reference), window)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert ks_p_value(d, n, m) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_statistic_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 5, 800).astype(float)  # heavy ties, like saturated probabilities
    window = rng.integers(0, 6, 150).astype(float)
    expected = stats.ks_2samp(reference, window, method="asymp")
    assert ks_statistic(np.sort(reference), window) == pytest.approx(expected.statistic)


@pytest.mark.parametrize("alpha", [0.05, 0.0025, 1e-5])
def test_threshold_is_the_distance_where_p_equals_alpha(alpha: float) -> None:
    d = ks_threshold(alpha, 200, 5000)
    assert ks_p_value(d, 200, 5000) == pytest.approx(alpha, rel=2e-3)  # kstwo.isf precision
    assert ks_p_value(d * 1.01, 200, 5000) < alpha < ks_p_value(d * 0.99, 200, 5000)


def test_known_critical_value() -> None:
    # Textbook: D_0.05 ~ 1.358 * sqrt((n+m)/(n*m)); n=100, m=10000 -> ~0.1365 (drift.md §1.5)
    assert ks_threshold(0.05, 100, 10_000) == pytest.approx(1.358 * np.sqrt(10_100 / 1e6), rel=0.03)


@pytest.mark.parametrize("values", ["continuous", "rounded", "integers"])
@pytest.mark.parametrize("fortran", [False, True])
def test_window_statistics_equal_the_per_signal_statistic_exactly(
    values: str, fortran: bool
) -> None:
    rng = np.random.default_rng(4)
    for _ in range(40):
        n, m, k = (int(x) for x in (*rng.integers(2, 400, 2), rng.integers(1, 6)))
        if values == "integers":  # ties within and across the samples, values only one has
            reference = rng.integers(0, 5, (n, k)).astype(float)
            window = rng.integers(0, 7, (m, k)).astype(float)
        else:
            reference = rng.standard_normal((n, k))
            window = rng.standard_normal((m, k)) + rng.uniform(-1, 1, k)
            if values == "rounded":
                reference, window = np.round(reference, 1), np.round(window, 1)
        reference = np.sort(reference, axis=0)
        if fortran:
            reference = np.asfortranarray(reference)
        expected = [ks_statistic(reference[:, j], window[:, j]) for j in range(k)]
        assert window_statistics(reference, window).tolist() == expected


def test_window_p_values_per_column() -> None:
    rng = np.random.default_rng(2)
    reference = np.sort(rng.standard_normal((2000, 3)), axis=0)
    window = rng.standard_normal((300, 3)) + np.array([0.0, 0.0, 1.0])
    d, p = window_p_values(reference, window)
    assert p[2] < 1e-20 < p[0]
    assert d[2] == pytest.approx(stats.ks_2samp(reference[:, 2], window[:, 2]).statistic)


def test_calibration_stays_near_bonferroni_for_independent_signals() -> None:
    samples = np.random.default_rng(3).standard_normal((3000, 10))
    alpha_signal = calibrate_signal_alpha(samples, 200, 0.05, simulations=200)
    # independent signals: Sidak ~ Bonferroni; the asymptotic p-value's conservatism at n=200
    # lets the calibrated cut sit somewhat above alpha/K
    assert 0.05 / 10 <= alpha_signal < 0.05 / 10 * 2.5


def test_calibration_uses_the_budget_for_redundant_signals() -> None:
    column = np.random.default_rng(4).standard_normal((3000, 1))
    samples = np.repeat(column, 10, axis=1)  # ten copies of one signal: really one test
    alpha_signal = calibrate_signal_alpha(samples, 200, 0.05, simulations=300)
    assert alpha_signal > 0.02  # Bonferroni would be 0.005


def test_small_reference_falls_back_to_bonferroni() -> None:
    column = np.random.default_rng(6).standard_normal((270, 1))
    samples = np.repeat(column, 10, axis=1)  # redundant signals, but only 2.7 windows of rows
    assert calibrate_signal_alpha(samples, 100, 0.05, simulations=100) == pytest.approx(0.005)


def test_calibrated_false_alarm_rate_on_fresh_null_windows() -> None:
    rng = np.random.default_rng(5)
    cov = 0.7 * np.ones((6, 6)) + 0.3 * np.eye(6)  # correlated signals
    draw = lambda n: rng.multivariate_normal(np.zeros(6), cov, n)  # noqa: E731
    reference = draw(3000)
    alpha = 0.1
    alpha_signal = calibrate_signal_alpha(reference, 100, alpha, simulations=300)
    sorted_ref = np.sort(reference, axis=0)
    alarms = [window_p_values(sorted_ref, draw(100))[1].min() < alpha_signal for _ in range(300)]
    assert np.mean(alarms) <= 1.5 * alpha
