"""The bounded intake between the event loop and the drift evaluation: what it keeps, what it
drops, and when it asks for a drain (a wake-up costs the event loop, so not on every request)."""

from __future__ import annotations

import numpy as np

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
