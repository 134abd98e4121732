"""The parity comparison: tolerances, NaN/Inf rules, shapes."""

from __future__ import annotations

import numpy as np

from exporters.parity import ParityReport, compare_output, parity_batches


def test_equal_within_tolerance_passes() -> None:
    want = np.array([[1.0, 2.0, 0.0]], np.float32)
    check = compare_output(1, "y", want, want + 5e-5, atol=1e-4, rtol=1e-3)
    assert check.passed and check.max_abs_error < 1e-4


def test_outside_tolerance_fails_with_the_worst_element() -> None:
    want = np.zeros((2, 3), np.float32)
    got = want.copy()
    got[1, 2] = 0.5
    check = compare_output(2, "y", want, got, atol=1e-4, rtol=1e-3)
    assert not check.passed
    assert check.worst_index == (1, 2) and check.actual == 0.5 and check.expected == 0.0
    assert "1 of 6 values" in check.reason


def test_relative_tolerance_scales_with_magnitude() -> None:
    want = np.array([[1000.0]], np.float32)
    assert compare_output(1, "y", want, want + 0.5, atol=1e-4, rtol=1e-3).passed
    assert not compare_output(1, "y", want, want + 2.0, atol=1e-4, rtol=1e-3).passed


def test_nan_that_torch_did_not_produce_fails() -> None:
    want = np.ones((1, 3), np.float32)
    got = want.copy()
    got[0, 1] = np.nan
    check = compare_output(1, "y", want, got, 1e-4, 1e-3)
    assert not check.passed and "NaN/Inf values that PyTorch did not produce" in check.reason
    got[0, 1] = np.inf
    assert not compare_output(1, "y", want, got, 1e-4, 1e-3).passed


def test_nan_and_inf_that_torch_also_produced_pass() -> None:
    want = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    assert compare_output(1, "y", want, want.copy(), 1e-4, 1e-3).passed
    flipped = want.copy()
    flipped[0, 1] = -np.inf
    assert not compare_output(1, "y", want, flipped, 1e-4, 1e-3).passed
    finite = want.copy()
    finite[0, 0] = 0.0
    assert "came out finite" in compare_output(1, "y", want, finite, 1e-4, 1e-3).reason


def test_shape_mismatch_fails() -> None:
    check = compare_output(1, "y", np.zeros((1, 3)), np.zeros((1, 4)), 1e-4, 1e-3)
    assert not check.passed and "shape" in check.reason


def test_integer_outputs_compare_exactly() -> None:
    want = np.array([[1, 2]], np.int64)
    assert compare_output(1, "y", want, want.copy(), 0.0, 0.0).passed
    assert not compare_output(1, "y", want, want + 1, 0.0, 0.0).passed


def test_report_and_batches() -> None:
    report = ParityReport(1e-4, 1e-3)
    report.checks.append(compare_output(1, "y", np.zeros((1, 2)), np.zeros((1, 2)), 1e-4, 1e-3))
    assert report.passed and report.to_json()["checks"][0]["output"] == "y"
    report.checks.append(compare_output(2, "y", np.zeros((1, 2)), np.ones((1, 2)), 1e-4, 1e-3))
    assert not report.passed and report.max_abs_error() == 1.0
    assert parity_batches(64) == [1, 2, 64]
    assert parity_batches(1) == [1]
    assert parity_batches(2) == [1, 2]
