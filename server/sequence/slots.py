"""What the sequence batcher keeps: live sequences, their queued requests (steps) and the
instances' batch slots (lanes)."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from server.runtimes import RequestRuntime, Runtime
from server.types import InferenceRequest


class LiveSequence:
    """One sequence: where it runs, its queued requests and its state."""

    __slots__ = ("corrid", "deadline", "lane", "last_seen", "queue", "slot", "state")

    def __init__(self, corrid: int | str) -> None:
        self.corrid = corrid
        self.queue: collections.deque[Step | None] = collections.deque()  # None: release
        self.state: dict[str, np.ndarray] | None = None
        self.last_seen = 0.0
        self.lane: Lane | None = None  # None: in the backlog
        self.slot = -1
        self.deadline = math.inf  # backlog expiry (the requests' timeouts)


class Step:
    """One request of a sequence, queued (a row of a batch: tensors.SequenceRow)."""

    __slots__ = ("end", "enqueued_at", "future", "inputs", "request", "sequence", "shape", "start")

    def __init__(
        self,
        sequence: LiveSequence,
        inputs: Mapping[str, np.ndarray],
        request: InferenceRequest,
        future: asyncio.Future[Any],
        enqueued_at: float | None = None,
    ) -> None:
        self.sequence = sequence
        self.inputs = inputs
        self.request = request
        self.future = future
        self.start = request.sequence_start
        self.end = request.sequence_end
        self.enqueued_at = time.perf_counter() if enqueued_at is None else enqueued_at
        self.shape = tuple([(name, array.shape) for name, array in inputs.items()])

    @property
    def corrid(self) -> int | str:
        return self.sequence.corrid

    @property
    def state(self) -> dict[str, np.ndarray] | None:
        return self.sequence.state


class Lane:
    """One model instance and its batch slots; it runs one batch at a time."""

    __slots__ = ("busy", "index", "kicked", "runtime", "slots", "timer")

    def __init__(self, index: int, runtime: Runtime | RequestRuntime, slots: int) -> None:
        self.index = index
        self.runtime = runtime
        self.slots: list[LiveSequence | None] = [None] * slots
        self.busy = False
        self.kicked = False
        self.timer: asyncio.TimerHandle | None = None

    def fronts(self) -> list[tuple[int, Step]]:
        """(slot, first queued request) of every slot with a request waiting."""
        ready = []
        for slot, sequence in enumerate(self.slots):
            if sequence is not None and sequence.queue:
                front = sequence.queue[0]
                if front is not None:
                    ready.append((slot, front))
        return ready
