"""The loop-lag probe measures how long the event loop was held."""

from __future__ import annotations

import asyncio
import time

from monitoring.families import render
from monitoring.loop_lag import LAG_BUCKETS_S, LoopLagProbe


def test_a_blocked_loop_shows_as_one_long_stall() -> None:
    async def scenario() -> LoopLagProbe:
        probe = LoopLagProbe(interval_s=0.001)
        probe.start()
        await asyncio.sleep(0.05)  # the timer fires freely
        time.sleep(0.06)  # noqa: ASYNC251 - the point: something holds the loop for 60 ms
        await asyncio.sleep(0.02)
        probe.stop()
        return probe

    probe = asyncio.run(scenario())
    assert 0.055 <= probe.max_s < 0.5
    over_50ms = sum(probe.counts[LAG_BUCKETS_S.index(0.05) + 1 :])
    assert over_50ms == 1
    assert sum(probe.counts) >= 10  # it kept firing before and after the stall


def test_exposition_is_a_histogram_and_a_max_gauge() -> None:
    probe = LoopLagProbe()
    probe.counts[0], probe.counts[3] = 5, 1
    probe.total_s, probe.max_s = 0.012, 0.007
    text = render(family.metric for family in probe.families()).decode()
    assert 'ferry_event_loop_lag_seconds_bucket{le="0.001"} 5' in text
    assert 'ferry_event_loop_lag_seconds_bucket{le="0.01"} 6' in text
    assert 'ferry_event_loop_lag_seconds_bucket{le="+Inf"} 6' in text
    assert "ferry_event_loop_lag_seconds_count 6" in text
    assert "ferry_event_loop_lag_max_seconds 0.007" in text


def test_a_stopped_probe_schedules_nothing() -> None:
    async def scenario() -> int:
        probe = LoopLagProbe(interval_s=0.001)
        probe.start()
        probe.stop()
        await asyncio.sleep(0.02)
        return sum(probe.counts)

    assert asyncio.run(scenario()) == 0
