"""The counters that decide which requests are sampled: a trace setting's (`trace_rate`,
`trace_count`) and the request log's (`--log-requests-rate`).

A sampler keeps two integers between requests and changes them with a step function that also
says whether this request is picked. In one process they are plain attributes
(`LocalCounter`); the workers of `ferry serve --workers N` keep them in a table they all map
(server/workers/sampling_table.py), so the server samples as one process would: every
`rate`-th request of the server, `trace_count` traces in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# (first, second) -> (first, second, picked)
Step = Callable[[int, int], tuple[int, int, bool]]


class SampleCounter(Protocol):
    def update(self, step: Step) -> bool:
        """Apply `step` to the two integers, atomically; whether this request is picked."""
        ...


# (key, first, second): the counter a sampler starts with (its initial values)
CounterFactory = Callable[[str, int, int], SampleCounter]


class LocalCounter:
    """This process's counter."""

    __slots__ = ("first", "second")

    def __init__(self, first: int = 0, second: int = 0) -> None:
        self.first, self.second = first, second

    def update(self, step: Step) -> bool:
        self.first, self.second, picked = step(self.first, self.second)
        return picked


def local_counter(_key: str, first: int, second: int) -> SampleCounter:
    return LocalCounter(first, second)


def trace_key(model: str) -> str:
    """The counter of a trace setting: the global one ('') or a model's own."""
    return f"trace:{model}"


REQUEST_LOG_KEY = "request-log"
