"""Triton's sequence batcher: the requests of one sequence (a correlation id) go, in order, to
one batch slot of one model instance, with control tensors and implicit state.

Routing (SequenceBatchScheduler::Enqueue): a START takes the free slot with the lowest index
(across instances) or waits in the backlog; later requests follow their sequence; an END
forgets the id (a new START with it is a new sequence). Unknown ids without START, zero ids,
batches of more than one row and ids of the wrong type are refused with Triton's messages. A
sequence idle for `max_sequence_idle_microseconds` is released after the requests it already
queued run; its next request without START is refused.

Each instance runs one batch at a time:
  direct {}  rows are slots 0..highest ready slot; a slot without a request is a null row
             (READY false); waits for `minimum_slot_utilization` up to `max_queue_delay`.
  oldest {}  a dynamic batch of the oldest front requests of its candidate sequences (at most
             one per sequence), `preferred_batch_size` and `max_queue_delay` as the dynamic
             batcher.

The scheduler keeps each live sequence's state and drops it when the sequence ends, is
released, or the version is unloaded (as Triton, nothing carries over a reload).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from server.batching import BatchResult, RequestTiming
from server.errors import ErrorKind, ServingError, invalid
from server.runtimes import RequestRuntime, Runtime
from server.sequence.execution import execute_batch, execute_requests
from server.sequence.policy import SequencePolicy
from server.sequence.slots import Lane, LiveSequence, Step
from server.sequence.strategies import direct_rows, oldest_rows
from server.sequence.tensors import BatchAssembler
from server.types import InferenceRequest

logger = logging.getLogger(__name__)

BACKLOG_IDLE_RECHECK_S = 0.05  # Triton's reaper revisits an idle sequence in the backlog
REAPER_MIN_INTERVAL_S = 0.001
STOPPING_MESSAGE = (
    "Server is stopping, scheduler for model has stopped accepting new inference requests"
)


@dataclass(frozen=True, slots=True)
class SequenceCounts:
    """Live sequences and lifetime counters of one version (metrics)."""

    active: int
    starts: int
    ends: int
    idle_releases: int


class SequenceBatcher:
    """The `sequence_batching` scheduler of one model version."""

    def __init__(
        self,
        runtimes: Sequence[Runtime | RequestRuntime],
        policy: SequencePolicy,
        output_names: Sequence[str],
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        if not runtimes:
            raise ValueError("a sequence batcher needs at least one runtime instance")
        self.policy = policy
        self.assembler = BatchAssembler(policy, output_names)
        self._lanes = [Lane(i, r, policy.slots_per_instance) for i, r in enumerate(runtimes)]
        self._free: list[tuple[int, int]] = [
            (slot, lane.index) for slot in range(policy.slots_per_instance) for lane in self._lanes
        ]
        heapq.heapify(self._free)
        self._live: dict[tuple[type, int | str], LiveSequence] = {}
        self._backlog: collections.deque[LiveSequence] = collections.deque()
        self._backlog_requests = 0
        self._queued = 0
        self._executing = 0
        self._accepting = True
        self._stopping = False
        self._on_batch = on_batch
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            len(runtimes), thread_name_prefix=f"ferry-{policy.name}"
        )
        self._executes_requests = bool(getattr(runtimes[0], "executes_requests", False))
        self._reaper: asyncio.TimerHandle | None = None
        self._reaper_at = math.inf
        self._idle = asyncio.Event()
        self._idle.set()
        self._variable_states = any(-1 in state.dims for state in policy.states)
        self._corrid = policy.corrid
        self.starts = self.ends = self.idle_releases = 0

    # --- what the data plane and the repository see ----------------------------------------

    @property
    def pending_count(self) -> int:
        """Requests accepted but not yet executing (backlog included)."""
        return self._queued

    @property
    def live_count(self) -> int:
        """Sequences started and neither ended nor released."""
        return len(self._live)

    def counts(self) -> SequenceCounts:
        return SequenceCounts(len(self._live), self.starts, self.ends, self.idle_releases)

    def continues_live_sequence(self, request: InferenceRequest) -> bool:
        """True when `request` belongs to a live sequence (served while the server drains)."""
        return _key(request.sequence_id) in self._live

    def stop(self) -> None:
        """The server is stopping: refuse new sequences, serve the live ones (Triton's Stop)."""
        self._stopping = True

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferenceRequest | None = None,
    ) -> tuple[Any, RequestTiming]:
        """Queue one request of a sequence (in arrival order: nothing awaits before it is
        queued) and wait for its outputs."""
        if not self._accepting:
            raise ServingError(ErrorKind.UNAVAILABLE, "model is shutting down")
        if request is None:
            raise ServingError(ErrorKind.INTERNAL, "the sequence batcher needs the whole request")
        self._check(request, rows)
        key = _key(request.sequence_id)
        sequence = self._live.get(key)
        start, end = request.sequence_start, request.sequence_end
        if self._stopping and start:
            raise ServingError(ErrorKind.UNAVAILABLE, STOPPING_MESSAGE)
        if sequence is None and not start:
            raise invalid(
                f"inference request for sequence {request.sequence_id} to model "
                f"'{request.model_name}' must specify the START flag on the first request of "
                "the sequence"
            )
        if sequence is not None and start:
            logger.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end "
                "before this sequence start. Previous sequence will be terminated early.",
                request.sequence_id,
                request.model_name,
            )
        backlogged = not self._free if sequence is None else sequence.lane is None
        if backlogged and self._backlog_requests >= self.policy.max_backlog:
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"Exceeds maximum sequence backlog size ({self.policy.max_backlog} requests)",
            )
        now = time.perf_counter()
        if sequence is None:
            sequence = LiveSequence(request.sequence_id)
            if self._free:
                slot, lane_index = heapq.heappop(self._free)
                self._assign(sequence, self._lanes[lane_index], slot)
            else:
                self._backlog.append(sequence)
        future: asyncio.Future[Any] = self._loop.create_future()
        sequence.queue.append(Step(sequence, inputs, request, future, now))
        sequence.last_seen = now
        if sequence.lane is None:
            self._backlog_requests += 1
            if timeout_us:
                sequence.deadline = min(sequence.deadline, now + timeout_us / 1e6)
        self._queued += 1
        self._idle.clear()
        self.starts += start
        self.ends += end
        if end:
            self._live.pop(key, None)
        else:
            self._live[key] = sequence
        self._arm_reaper(min(now + self.policy.idle_s, sequence.deadline))
        if sequence.lane is not None:
            self._kick(sequence.lane)
        result: tuple[Any, RequestTiming] = await future
        return result

    def _check(self, request: InferenceRequest, rows: int) -> None:
        """Triton's checks, in its order: the id's type, the batch size, a non-zero id."""
        corrid = self._corrid
        sequence_id = request.sequence_id
        if corrid is not None:
            given = "BYTES" if isinstance(sequence_id, str) else "UINT64"
            if (given == "BYTES") != (corrid.datatype == "BYTES"):
                prefix = f"[request id: {request.id}] " if request.id else ""
                raise invalid(
                    f"{prefix}sequence batching control '{corrid.name}' data-type is '{given}', "
                    f"but model '{request.model_name}' expects '{corrid.datatype}'"
                )
        if self.policy.max_batch_size > 0 and rows > 1:
            raise invalid(
                f"inference request to model '{request.model_name}' must specify batch-size 1 "
                "due to requirements of sequence batcher"
            )
        if isinstance(sequence_id, int) and sequence_id >= 2**64:
            raise invalid("parameter 'sequence_id' must be an unsigned 64-bit integer or a string")
        if sequence_id == 0 or sequence_id == "":
            raise invalid(
                f"inference request to model '{request.model_name}' must specify a non-zero or "
                "non-empty correlation ID"
            )

    # --- slots, backlog and the idle reaper ----------------------------------------------

    def _assign(self, sequence: LiveSequence, lane: Lane, slot: int) -> None:
        sequence.lane, sequence.slot = lane, slot
        lane.slots[slot] = sequence

    def _release(self, lane: Lane, slot: int) -> None:
        """Give a freed slot to the oldest backlogged sequence, or back to the free slots."""
        lane.slots[slot] = None
        while self._backlog:
            sequence = self._backlog.popleft()
            if not sequence.queue:  # its requests timed out in the backlog
                continue
            self._backlog_requests -= len(sequence.queue)
            self._assign(sequence, lane, slot)
            return
        heapq.heappush(self._free, (slot, lane.index))

    def _arm_reaper(self, at: float) -> None:
        if at >= self._reaper_at:
            return
        if self._reaper is not None:
            self._reaper.cancel()
        self._reaper_at = at
        self._reaper = self._loop.call_at(
            self._loop.time() + max(at - time.perf_counter(), REAPER_MIN_INTERVAL_S), self._reap
        )

    def _reap(self) -> None:
        """Release idle sequences (after what they queued) and expire backlogged requests."""
        self._reaper, self._reaper_at = None, math.inf
        now = time.perf_counter()
        next_at = math.inf
        idle_s = self.policy.idle_s
        for key, sequence in list(self._live.items()):
            expiry = sequence.last_seen + idle_s
            if expiry > now:
                next_at = min(next_at, expiry)
            elif sequence.lane is None:
                next_at = min(next_at, now + BACKLOG_IDLE_RECHECK_S)
            else:
                del self._live[key]
                sequence.queue.append(None)
                self.idle_releases += 1
                self._kick(sequence.lane)
        for sequence in list(self._backlog):
            if sequence.deadline <= now:
                self._expire(sequence)
            elif sequence.deadline != math.inf:
                next_at = min(next_at, sequence.deadline)
        if next_at != math.inf:
            self._arm_reaper(next_at)

    def _expire(self, sequence: LiveSequence) -> None:
        """A backlogged sequence's timeout passed: its requests fail, as Triton's."""
        self._backlog.remove(sequence)
        key = _key(sequence.corrid)
        if self._live.get(key) is sequence:
            del self._live[key]
        error = ServingError(
            ErrorKind.UNAVAILABLE, "timeout of the corresponding sequence has been expired"
        )
        while sequence.queue:
            step = sequence.queue.popleft()
            if step is not None:
                self._queued -= 1
                self._backlog_requests -= 1
                if not step.future.done():
                    step.future.set_exception(error)
        self._update_idle()

    # --- batches -----------------------------------------------------------------------

    def _kick(self, lane: Lane) -> None:
        if not lane.kicked:
            lane.kicked = True
            self._loop.call_soon(self._run, lane)

    def _run(self, lane: Lane) -> None:
        lane.kicked = False
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if lane.busy:
            return
        for slot, sequence in enumerate(lane.slots):
            if sequence is None:
                continue
            if sequence.queue and sequence.queue[0] is None:  # released while idle
                sequence.queue.popleft()
                self._release(lane, slot)
            elif not self._accepting and not sequence.queue:  # draining: no more will come
                self._release(lane, slot)
        form = oldest_rows if self.policy.oldest else direct_rows
        rows, wait_s = form(lane, self.policy, self._shape_key)
        if rows:
            self._dispatch(lane, rows)
        elif wait_s is not None:
            lane.timer = self._loop.call_later(max(wait_s, 0.0), self._kick, lane)

    def _shape_key(self, step: Step) -> Hashable:
        """Rows batch together when their inputs (and variable-size states) have one shape."""
        if not self._variable_states:
            return step.shape
        states = self.assembler.row_states(step)
        return (step.shape, tuple(array.shape for array in states.values()))

    def _dispatch(self, lane: Lane, rows: list[Step | None]) -> None:
        real = [step for step in rows if step is not None]
        for step in real:
            step.sequence.queue.popleft()
            if step.end and step.sequence.lane is lane:
                self._release(lane, step.sequence.slot)
                step.sequence.lane = None
        self._queued -= len(real)
        self._executing += 1
        lane.busy = True
        dispatched_at = time.perf_counter()

        def on_done(done: asyncio.Future[Any]) -> None:
            error = done.exception()
            self._complete(lane, rows, None if error else done.result(), error, dispatched_at)

        if self._executes_requests:
            task = self._loop.create_task(
                execute_requests(self.assembler, cast(RequestRuntime, lane.runtime), rows)
            )
            task.add_done_callback(on_done)
            return
        future = self._loop.run_in_executor(
            self._executor, execute_batch, self.assembler, cast(Runtime, lane.runtime), rows
        )
        future.add_done_callback(on_done)

    def _complete(
        self,
        lane: Lane,
        rows: list[Step | None],
        result: Any,
        error: BaseException | None,
        dispatched_at: float,
    ) -> None:
        lane.busy = False
        self._executing -= 1
        real = [step for step in rows if step is not None]
        t_in, t_infer, t_out = (0.0, 0.0, 0.0) if error is not None else result[1]
        for index, step in enumerate(real):
            if step.future.done():
                continue
            if error is not None:
                failure = (
                    error
                    if isinstance(error, ServingError)
                    else ServingError(ErrorKind.INTERNAL, f"model execution failed: {error}")
                )
                step.future.set_exception(failure)
                continue
            outcome = result[0][index]
            if isinstance(outcome, BaseException):
                step.future.set_exception(outcome)
                continue
            timing = RequestTiming(
                dispatched_at - step.enqueued_at, t_in, t_infer, t_out, len(rows)
            )
            step.future.set_result((outcome, timing))
        if self._on_batch is not None:
            self._on_batch(BatchResult(len(rows), len(real), t_in, t_infer, t_out, error is None))
        self._update_idle()
        self._kick(lane)

    def _update_idle(self) -> None:
        if not self._queued and not self._executing:
            self._idle.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting; run what was accepted (backlogged sequences take the slots of the
        live ones, whose state is dropped); then release the instances."""
        self._accepting = False
        self._stopping = True
        for lane in self._lanes:
            self._kick(lane)
        await self._idle.wait()
        if self._reaper is not None:
            self._reaper.cancel()
        for lane in self._lanes:
            if lane.timer is not None:
                lane.timer.cancel()
        self._live.clear()
        self._executor.shutdown(wait=True)
        for lane in self._lanes:
            if self._executes_requests:
                await cast(RequestRuntime, lane.runtime).aclose()
            else:
                lane.runtime.close()


def _key(sequence_id: int | str) -> tuple[type, int | str]:
    """Ids of different types never match (5 and "5" are two sequences)."""
    return (type(sequence_id), sequence_id)
