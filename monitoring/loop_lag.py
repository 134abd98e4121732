"""Event-loop lag probe: how late a periodic timer fires is how long the loop was busy.

Every request of `ferry serve` is parsed, batched and answered on one event loop, so anything that
holds the loop (a garbage collection, a long callback, a slow scrape) delays every request in
flight: it shows in the tail latency, not in the throughput. The probe arms a timer every
`interval_s`; the time between when it was due and when it ran is the stall it saw. Lateness
under about one interval is the timer's own granularity (uvloop ticks in whole milliseconds).

Off by default (`ferry serve --loop-lag-probe`): then nothing is scheduled and nothing is exported.
"""

from __future__ import annotations

import asyncio
import bisect
import time

from monitoring.families import Family

LAG_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLagProbe:
    """Measures the lateness of a timer re-armed every `interval_s` on the running loop."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.counts = [0] * (len(LAG_BUCKETS_S) + 1)  # per bucket, the last is +Inf
        self.total_s = 0.0
        self.max_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Start probing the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        """Stop probing."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = time.perf_counter() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._fired)

    def _fired(self) -> None:
        lag_s = max(time.perf_counter() - self._due, 0.0)
        self.counts[bisect.bisect_left(LAG_BUCKETS_S, lag_s)] += 1
        self.total_s += lag_s
        self.max_s = max(self.max_s, lag_s)
        self._arm()

    def families(self) -> list[Family]:
        """`ferry_event_loop_lag_seconds` (histogram) and `ferry_event_loop_lag_max_seconds`."""
        histogram = Family(
            "ferry_event_loop_lag_seconds",
            "How late the loop-lag probe's timer fired: how long other work held the event loop.",
            "histogram",
        )
        histogram.add_histogram({}, LAG_BUCKETS_S, list(self.counts), self.total_s)
        longest = Family(
            "ferry_event_loop_lag_max_seconds",
            "Longest event-loop stall the probe has seen since the server started.",
            "gauge",
        )
        longest.add({}, self.max_s)
        return [histogram, longest]
