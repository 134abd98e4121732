"""Tumbling window logic: completion, carry-over, staleness cap."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.window import TumblingWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=float).reshape(-1, 1).repeat(2, axis=1)


def test_windows_tumble_and_carry_rows_over() -> None:
    window = TumblingWindow(10, 2)
    assert window.add(rows(0, 7)) == []
    completed = window.add(rows(7, 25))  # 32 rows so far: three windows, 2 rows left
    assert [w[:, 0].tolist() for w in completed] == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    assert window.filled == 2


def test_completed_windows_are_copies() -> None:
    window = TumblingWindow(3, 2)
    first = window.add(rows(0, 3))[0]
    window.add(rows(100, 3))
    assert first[:, 0].tolist() == [0, 1, 2]


def test_stale_window_is_evaluated_when_big_enough() -> None:
    clock = FakeClock()
    window = TumblingWindow(100, 2, max_age_s=60, min_rows=20, clock=clock)
    window.add(rows(0, 30))
    clock.now = 59
    assert window.close_if_stale() is None
    clock.now = 61
    stale = window.close_if_stale()
    assert stale is not None and stale.shape == (30, 2)
    assert window.filled == 0


def test_stale_window_too_small_is_discarded_and_counted() -> None:
    clock = FakeClock()
    window = TumblingWindow(100, 2, max_age_s=60, min_rows=20, clock=clock)
    window.add(rows(0, 5))
    clock.now = 100
    assert window.close_if_stale() is None
    assert (window.filled, window.expired) == (0, 1)


def test_age_counts_from_the_first_row_of_a_window() -> None:
    clock = FakeClock()
    window = TumblingWindow(10, 2, max_age_s=60, min_rows=2, clock=clock)
    clock.now = 1000  # idle time before the first row does not count
    window.add(rows(0, 3))
    clock.now = 1030
    assert window.close_if_stale() is None


def test_rejects_tiny_windows() -> None:
    with pytest.raises(ValueError):
        TumblingWindow(1, 2)
