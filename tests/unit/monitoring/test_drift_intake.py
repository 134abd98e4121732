"""The bounded intake between the event loop and the drift evaluation: what it keeps, what it
drops, and when it asks for a drain (a wake-up costs the event loop, so not on every request)."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.drift_intake import RowIntake


def offer_one(intake: RowIntake) -> bool:
    row = np.zeros((1, 4), np.float32)
    return intake.offer({"x": row}, {"y": row}, 1, True)


def test_a_drain_is_asked_for_once_when_a_quarter_fills() -> None:
    intake = RowIntake(max_rows=40)
    answers = [offer_one(intake) for _ in range(40)]
    assert answers.index(True) == 9  # the 10th row fills a quarter of 40
    assert answers.count(True) == 1
    assert len(intake.take()) == 40
    answers = [offer_one(intake) for _ in range(10)]  # empty again: the next quarter asks again
    assert answers == [False] * 9 + [True]


def test_a_request_that_jumps_past_the_quarter_asks_once() -> None:
    intake = RowIntake(max_rows=40)
    rows = np.zeros((12, 4), np.float32)
    assert intake.offer({"x": rows}, {}, 12, True)
    assert not intake.offer({"x": rows}, {}, 12, True)


def test_a_full_intake_counts_every_dropped_row_and_asks_on_the_first_drop_only() -> None:
    intake = RowIntake(max_rows=8)
    for _ in range(8):
        offer_one(intake)
    drops = [offer_one(intake) for _ in range(5)]
    assert drops == [True, False, False, False, False]
    assert intake.dropped_rows == 5
    assert len(intake.take()) == 8
    for _ in range(8):
        offer_one(intake)
    assert offer_one(intake)  # dropping again after a drain: asks again
    assert intake.dropped_rows == 6


def test_the_byte_limit_drops_like_the_row_limit() -> None:
    intake = RowIntake(max_rows=1000, max_bytes=100)
    big = np.zeros((1, 20), np.float32)  # 80 bytes
    assert not intake.offer({"x": big}, {}, 1, True)
    assert intake.offer({"x": big}, {}, 1, True)  # 160 > 100: dropped, the first drop asks
    assert intake.dropped_rows == 1
    assert len(intake.take()) == 1


def test_a_sample_rate_takes_that_fraction_of_requests_evenly_and_drops_none() -> None:
    intake = RowIntake(max_rows=10_000, sample_rate=0.25)
    queued = []
    for _ in range(400):
        offer_one(intake)
        queued.append(intake.queued_rows)
    assert queued[:8] == [0, 0, 0, 1, 1, 1, 1, 2]  # evenly spread, not in bursts
    assert len(intake.take()) == 100  # every fourth request
    assert intake.dropped_rows == 0  # requests left out by sampling are not dropped rows
    third = RowIntake(max_rows=10_000, sample_rate=1 / 3)
    for _ in range(300):
        offer_one(third)
    assert len(third.take()) == 100


def test_a_sample_rate_outside_0_1_is_refused() -> None:
    for rate in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            RowIntake(max_rows=10, sample_rate=rate)
