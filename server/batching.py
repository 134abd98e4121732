"""Triton-style dynamic batcher: one queue (or one per priority level) per model version.

Batch formation follows Triton's DynamicBatchScheduler (reference/triton.md §3.2): when an
instance is free, requests are scanned in arrival order, highest priority first; requests join
while their non-batch shapes equal the first one's and the rows fit `max_batch_size`. A preferred
size is executed at once; a full or shape-closed batch is executed at once; otherwise the batch
waits for more requests up to `max_queue_delay` (0: take what is queued). Queue policies reject
on a full queue and time requests out (REJECT) or move them behind the others (DELAY).

Inputs are concatenated along axis 0 (one copy) on the instance's worker thread and outputs are
split back as views, so a request only ever sees its own rows. A runtime that executes requests
(`RequestRuntime`, e.g. a Python model) gets the batch as the list of its requests instead,
awaited on the event loop, and answers each request on its own (an error fails only its request).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from server.errors import ErrorKind, ServingError
from server.fault_isolation import (
    IsolatedBatch,
    as_serving_error,
    isolate_failure,
    worth_isolating,
)
from server.padding import PaddingPlan
from server.repository_format import ModelConfig
from server.runtimes import RequestRuntime, Runtime, SharedExecutionOutcomes
from server.types import InferenceRequest

TIMEOUT_ACTION_DELAY = 1  # ModelQueuePolicy.TimeoutAction.DELAY
INLINE_MAX_S = 200e-6  # executions faster than this run on the event loop (see _inline_ok)
INLINE_WARMUP_EXECUTIONS = 20


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one queue."""

    max_queue_size: int = 0
    default_timeout_s: float = 0.0
    allow_timeout_override: bool = False
    delay_on_timeout: bool = False

    @classmethod
    def from_proto(cls, policy: Any) -> QueuePolicy:
        """Read a ModelQueuePolicy message."""
        return cls(
            max_queue_size=int(policy.max_queue_size),
            default_timeout_s=policy.default_timeout_microseconds / 1e6,
            allow_timeout_override=bool(policy.allow_timeout_override),
            delay_on_timeout=policy.timeout_action == TIMEOUT_ACTION_DELAY,
        )

    def timeout_s(self, requested_us: int) -> float:
        """A request's timeout: the default, shortened (never lengthened) by an allowed override."""
        if (
            self.allow_timeout_override
            and requested_us
            and self.default_timeout_s
            and requested_us / 1e6 < self.default_timeout_s
        ):
            return requested_us / 1e6
        return self.default_timeout_s


NO_QUEUE_POLICY = QueuePolicy()  # a level without a policy: no size limit, no timeout


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Everything the batcher takes from a model config."""

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    queue_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelConfig) -> BatchingPolicy:
        """Triton's semantics: no `dynamic_batching` means each request executes on its own."""
        if not config.HasField("dynamic_batching"):
            return cls(max_batch_size=int(config.max_batch_size))
        dyn = config.dynamic_batching
        default = QueuePolicy.from_proto(dyn.default_queue_policy)
        levels = int(dyn.priority_levels)
        policies = {level: default for level in range(levels + 1)}
        for level, policy in dyn.priority_queue_policy.items():
            policies[int(level)] = QueuePolicy.from_proto(policy)
        preferred = tuple(sorted(int(s) for s in dyn.preferred_batch_size))
        return cls(
            max_batch_size=int(config.max_batch_size),
            dynamic=config.max_batch_size > 0,
            preferred_batch_sizes=preferred or (int(config.max_batch_size),),
            max_queue_delay_s=dyn.max_queue_delay_microseconds / 1e6,
            preserve_ordering=bool(dyn.preserve_ordering),
            priority_levels=levels,
            default_priority_level=int(dyn.default_priority_level) if levels else 0,
            queue_policies=policies,
        )

    def level_of(self, priority: int) -> int:
        """Queue index for a request priority (0: the default level; clamped to the levels)."""
        if not self.priority_levels:
            return 0
        if priority <= 0:
            return self.default_priority_level or self.priority_levels
        return min(priority, self.priority_levels)


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class RequestTiming:
    """Where one request's time went, in seconds, and the size of the batch it ran in."""

    queue_s: float
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float
    batch_size: int


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class BatchResult:
    """Reported once per execution (statistics, metrics)."""

    batch_size: int
    request_count: int
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float
    success: bool


class _Pending:
    __slots__ = (
        "deadline",
        "enqueued_at",
        "future",
        "inputs",
        "level",
        "request",
        "rows",
        "shape_key",
    )

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        shape_key: Hashable,
        level: int,
        deadline: float,
        future: asyncio.Future[Any],
        request: InferenceRequest | None,
    ) -> None:
        self.inputs = inputs
        self.request = request
        self.rows = rows
        self.shape_key = shape_key
        self.level = level
        self.deadline = deadline
        self.enqueued_at = time.perf_counter()
        self.future = future


class Batcher:
    """Owns the queue of one model version and its instances (one worker thread each)."""

    def __init__(
        self,
        runtimes: Sequence[Runtime | RequestRuntime],
        policy: BatchingPolicy,
        output_names: Sequence[str],
        on_batch: Callable[[BatchResult], None] | None = None,
        name: str = "model",
        padding: PaddingPlan | None = None,
    ) -> None:
        if not runtimes:
            raise ValueError("a batcher needs at least one runtime instance")
        self.policy = policy
        self.output_names = list(output_names)
        self._runtimes = list(runtimes)
        # the batches an instance may hold at once: one, or more for an instance whose process
        # runs together what waits for it (server/runtimes/python/stub.py)
        self._free = [r for r in runtimes for _ in range(getattr(r, "concurrent_batches", 1))]
        self._executor = ThreadPoolExecutor(len(runtimes), thread_name_prefix=f"ferry-{name}")
        self._on_batch = on_batch
        # requests of different sizes in the padded dims share batches (server/padding.py)
        self._padding = padding if policy.dynamic else None
        levels = policy.priority_levels + 1
        self._queues: list[collections.deque[_Pending]] = [
            collections.deque() for _ in range(levels)
        ]
        self._delayed: list[collections.deque[_Pending]] = [
            collections.deque() for _ in range(levels)
        ]
        self._queued = 0
        self._timed = 0  # queued requests with a finite deadline
        self._inflight = 0
        self._accepting = True
        self._loop = asyncio.get_running_loop()
        self._run_scheduled = False  # a _run callback is queued on the loop
        self._running = False  # inside _run (inline executions complete there)
        self._timer: asyncio.TimerHandle | None = None  # wakes _run when a queue delay ends
        self._idle = asyncio.Event()
        self._idle.set()
        self._sequence = itertools.count()
        self._next_delivery = 0
        self._held: dict[int, Callable[[], None]] = {}
        self._executions = 0
        self._execute_s_ewma = 0.0
        # runtimes that block on I/O (the Triton gateway) never run on the event loop
        self._inline_capable = len(self._runtimes) == 1 and getattr(
            self._runtimes[0], "inline_capable", True
        )
        # request runtimes take the batch as its list of requests, on the event loop
        self._executes_requests = bool(getattr(self._runtimes[0], "executes_requests", False))
        self._inline_capable = self._inline_capable and not self._executes_requests

    @property
    def pending_count(self) -> int:
        """Requests accepted but not yet executing (nv_inference_pending_request_count)."""
        return self._queued

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferenceRequest | None = None,
    ) -> asyncio.Future[tuple[Any, RequestTiming]]:
        """Queue a validated request now (or raise why not) and return the future of its own
        outputs (a request runtime's outcome: outputs, or a ResponseStream of a decoupled model);
        `request` is what a request runtime receives. A plain function, not a coroutine: a
        caller awaits the future itself (one coroutine frame fewer per request), or answers
        from its callback."""
        if not self._accepting:
            raise ServingError(ErrorKind.UNAVAILABLE, "model is shutting down")
        level = self.policy.level_of(priority)
        queue_policy = self.policy.queue_policies.get(level, NO_QUEUE_POLICY)
        queue = self._queues[level]
        if (
            queue_policy.max_queue_size
            and len(queue) + len(self._delayed[level]) >= queue_policy.max_queue_size
        ):
            raise ServingError(ErrorKind.UNAVAILABLE, "Exceeds maximum queue size")
        timeout_s = queue_policy.timeout_s(timeout_us)
        future: asyncio.Future[Any] = self._loop.create_future()
        deadline = time.perf_counter() + timeout_s if timeout_s else math.inf
        if self._padding is not None:
            shape_key = self._padding.shape_key(inputs)
        elif self.policy.dynamic:
            shape_key = tuple((name, array.shape[1:]) for name, array in inputs.items())
        else:
            shape_key = None
        queue.append(_Pending(inputs, rows, shape_key, level, deadline, future, request))
        self._queued += 1
        self._timed += deadline != math.inf
        self._idle.clear()
        self._kick()
        return future

    # --- scheduling (event loop) ---------------------------------------------------------------

    def _kick(self) -> None:
        """Run the scheduler at the next loop turn: every request that arrives in this turn
        can still join the batch (a plain callback, cheaper than waking a task)."""
        if not self._run_scheduled and not self._running:
            self._run_scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        """Form and dispatch batches while an instance is free; arm a timer for a queue delay."""
        self._run_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running = True
        try:
            while self._free and self._queued:
                now = time.perf_counter()
                if self._timed:
                    self._apply_timeouts(now)
                    if not self._queued:
                        break
                batch, wait_s = self._form_batch(now)
                if not batch:
                    # uvloop's timers tick in whole milliseconds (0.8 ms fires after ~1.2 ms):
                    # a wait under 1 ms re-checks on every loop turn instead
                    wait_s = wait_s or 0.0
                    self._timer = self._loop.call_later(
                        wait_s if wait_s >= 1e-3 else 0.0, self._kick
                    )
                    break
                self._dispatch(batch)
        finally:
            self._running = False

    def _scan(self) -> itertools.chain[_Pending]:
        """Arrival order, highest priority (level 1) first; delayed requests last in a level."""
        return itertools.chain.from_iterable(
            itertools.chain(self._queues[level], self._delayed[level])
            for level in range(len(self._queues))
        )

    def _apply_timeouts(self, now: float) -> None:
        for level in range(len(self._queues)):
            queue = self._queues[level]
            if not any(p.deadline <= now for p in queue):
                continue
            kept: collections.deque[_Pending] = collections.deque()
            for pending in queue:
                if pending.deadline > now:
                    kept.append(pending)
                    continue
                self._timed -= 1
                if self.policy.queue_policies[level].delay_on_timeout:
                    pending.deadline = math.inf
                    self._delayed[level].append(pending)
                else:
                    self._queued -= 1
                    if not pending.future.done():
                        pending.future.set_exception(
                            ServingError(ErrorKind.UNAVAILABLE, "Request timeout expired")
                        )
            self._queues[level] = kept
        self._update_idle()

    def _form_batch(self, now: float) -> tuple[list[_Pending], float | None]:
        policy = self.policy
        if not policy.dynamic:
            return [next(self._scan())], None
        taken: list[_Pending] = []
        rows = 0
        best_cut = 0
        forced = False
        max_preferred = policy.preferred_batch_sizes[-1]
        for pending in self._scan():
            if taken and (
                pending.shape_key != taken[0].shape_key
                or rows + pending.rows > policy.max_batch_size
            ):
                forced = True
                break
            taken.append(pending)
            rows += pending.rows
            if rows in policy.preferred_batch_sizes:
                best_cut = len(taken)
            if rows >= max_preferred:
                break
        waited = now - taken[0].enqueued_at
        if best_cut and waited < policy.max_queue_delay_s:
            return taken[:best_cut], None
        if (
            forced
            or rows >= max_preferred
            or policy.max_queue_delay_s <= 0
            or waited >= policy.max_queue_delay_s
        ):
            return taken, None
        wait_s = policy.max_queue_delay_s - waited
        if self._timed:
            nearest = min(p.deadline for p in self._scan())
            wait_s = min(wait_s, max(nearest - now, 0.0))
        return [], wait_s

    def _dispatch(self, batch: list[_Pending]) -> None:
        remaining = len(batch)
        for level in range(len(self._queues)):
            for queue in (self._queues[level], self._delayed[level]):
                while remaining and queue and queue[0] is batch[len(batch) - remaining]:
                    queue.popleft()
                    remaining -= 1
        self._queued -= len(batch)
        self._timed -= sum(p.deadline != math.inf for p in batch)
        runtime = self._free.pop()
        self._inflight += 1
        sequence = next(self._sequence)
        dispatched_at = time.perf_counter()

        def on_done(done: asyncio.Future[Any]) -> None:
            error = done.exception()
            self._complete(
                None if error else done.result(), error, runtime, batch, sequence, dispatched_at
            )

        if self._executes_requests:
            request_runtime = cast(RequestRuntime, runtime)
            self._loop.create_task(
                self._execute_requests(request_runtime, batch)
            ).add_done_callback(on_done)
            return
        runtime = cast(Runtime, runtime)
        if self._inline_ok():
            try:
                result = self._execute(runtime, batch)
            except Exception as exc:
                self._complete(None, exc, runtime, batch, sequence, dispatched_at)
            else:
                self._complete(result, None, runtime, batch, sequence, dispatched_at)
            return
        future = self._loop.run_in_executor(self._executor, self._execute, runtime, batch)
        future.add_done_callback(on_done)

    def _inline_ok(self) -> bool:
        """Tiny models run on the event loop: a thread hand-off (~100-200 us of loop time and GIL
        ping-pong) would cost more than the model.

        Only with one instance, after enough executions to trust the moving average, and only
        while executions stay well under INLINE_MAX_S (one slow run sends them back to the pool).
        """
        return (
            self._inline_capable
            and self._executions >= INLINE_WARMUP_EXECUTIONS
            and self._execute_s_ewma < INLINE_MAX_S
        )

    # --- execution (worker thread, or the event loop for request runtimes) ----------------------

    async def _execute_requests(
        self, runtime: RequestRuntime, batch: list[_Pending]
    ) -> tuple[list[Any], tuple[float, float, float], int]:
        t0 = time.perf_counter()
        requests = [p.request for p in batch]
        if any(r is None for r in requests):
            raise ServingError(ErrorKind.INTERNAL, "this model needs the whole request")
        outcomes = await runtime.execute(requests)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        if len(outcomes) != len(batch):
            raise ServingError(
                ErrorKind.INTERNAL, f"{len(outcomes)} outcomes for a batch of {len(batch)}"
            )
        if isinstance(outcomes, SharedExecutionOutcomes):  # its execution's size
            return outcomes, (0.0, t1 - t0, 0.0), outcomes.rows
        return outcomes, (0.0, t1 - t0, 0.0), sum(p.rows for p in batch)

    def _execute(
        self, runtime: Runtime, batch: list[_Pending]
    ) -> tuple[list[dict[str, np.ndarray]], tuple[float, float, float], int] | IsolatedBatch:
        """Run one batch; when a batch of several requests fails, find the requests at fault
        (server/fault_isolation.py) so that only they fail."""
        try:
            return self._run_batch(runtime, batch)
        except Exception as error:  # the search costs nothing until a batch fails
            if len(batch) == 1 or not worth_isolating(error):
                raise
            return isolate_failure(
                error,
                batch,
                lambda pending: pending.rows,
                lambda part: self._run_batch(runtime, part),
            )

    def _run_batch(
        self, runtime: Runtime, batch: list[_Pending]
    ) -> tuple[list[dict[str, np.ndarray]], tuple[float, float, float], int]:
        t0 = time.perf_counter()
        if len(batch) == 1:
            inputs = batch[0].inputs
        elif self._padding is not None:
            inputs = self._padding.concatenate([p.inputs for p in batch])
        else:
            inputs = {
                name: np.concatenate([p.inputs[name] for p in batch], axis=0)
                for name in batch[0].inputs
            }
        rows = sum(p.rows for p in batch)
        t1 = time.perf_counter()
        outputs = runtime.infer(inputs, self.output_names)
        t2 = time.perf_counter()
        if len(batch) == 1:
            per_request = [outputs]
        else:
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != rows:
                    raise ServingError(
                        ErrorKind.INTERNAL,
                        f"output '{name}' has shape {list(array.shape)}, expected {rows} rows "
                        "for the batch: the model's first dimension is not a batch dimension",
                    )
            per_request, offset = [], 0
            for pending in batch:
                end = offset + pending.rows
                per_request.append({name: array[offset:end] for name, array in outputs.items()})
                offset = end
            if self._padding is not None:
                plan = self._padding
                per_request = [
                    plan.cut(own, plan.sizes(pending.inputs))
                    for own, pending in zip(per_request, batch, strict=True)
                ]
        t3 = time.perf_counter()
        self._executions += 1
        self._execute_s_ewma += 0.1 * ((t3 - t0) - self._execute_s_ewma)
        return per_request, (t1 - t0, t2 - t1, t3 - t2), rows

    # --- completion (event loop) ---------------------------------------------------------------

    def _complete(
        self,
        result: Any,
        error: BaseException | None,
        runtime: Runtime | RequestRuntime,
        batch: list[_Pending],
        sequence: int,
        dispatched_at: float,
    ) -> None:
        self._free.append(runtime)
        self._inflight -= 1
        if isinstance(result, IsolatedBatch):
            self._complete_isolated(result, batch, sequence, dispatched_at)
            return
        if error is None:
            per_request, (t_in, t_infer, t_out), rows = result
        else:
            per_request, (t_in, t_infer, t_out), rows = [], (0.0, 0.0, 0.0), 0

        def deliver() -> None:
            for index, pending in enumerate(batch):
                if pending.future.done():
                    continue
                if error is None and isinstance(per_request[index], BaseException):
                    pending.future.set_exception(per_request[index])  # that request only
                elif error is not None:
                    failure = (
                        error
                        if isinstance(error, ServingError)
                        else ServingError(ErrorKind.INTERNAL, f"model execution failed: {error}")
                    )
                    pending.future.set_exception(failure)
                else:
                    timing = RequestTiming(
                        dispatched_at - pending.enqueued_at, t_in, t_infer, t_out, rows
                    )
                    pending.future.set_result((per_request[index], timing))

        self._deliver_in_order(sequence, deliver)
        requests = len(batch)
        if isinstance(per_request, SharedExecutionOutcomes):
            # one execution with other workers' batches: reported once, by one of them
            requests = per_request.requests if per_request.reports else 0
        if self._on_batch is not None and requests:
            self._on_batch(
                BatchResult(
                    rows or sum(p.rows for p in batch),
                    requests,
                    t_in,
                    t_infer,
                    t_out,
                    error is None,
                )
            )
        self._update_idle()
        self._kick()

    def _deliver_in_order(self, sequence: int, deliver: Callable[[], None]) -> None:
        if self.policy.preserve_ordering:
            self._held[sequence] = deliver
            while self._next_delivery in self._held:
                self._held.pop(self._next_delivery)()
                self._next_delivery += 1
        else:
            deliver()

    def _complete_isolated(
        self, outcome: IsolatedBatch, batch: list[_Pending], sequence: int, dispatched_at: float
    ) -> None:
        """A failed batch after the search: the culprits get their own errors, the others
        their outputs; every execution of the search is reported."""

        def deliver() -> None:
            for index, pending in enumerate(batch):
                if pending.future.done():
                    continue
                if index in outcome.outputs:
                    outputs, (t_in, t_infer, t_out), rows = outcome.outputs[index]
                    timing = RequestTiming(
                        dispatched_at - pending.enqueued_at, t_in, t_infer, t_out, rows
                    )
                    pending.future.set_result((outputs, timing))
                else:
                    pending.future.set_exception(
                        outcome.errors.get(index) or as_serving_error(outcome.error)
                    )

        self._deliver_in_order(sequence, deliver)
        if self._on_batch is not None:
            for execution in outcome.executions:
                self._on_batch(
                    BatchResult(
                        execution.rows,
                        execution.request_count,
                        *execution.timings,
                        execution.success,
                    )
                )
        self._update_idle()
        self._kick()

    def _update_idle(self) -> None:
        if not self._queued and not self._inflight:
            self._idle.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting, finish everything queued or running, then release the instances."""
        self._accepting = False
        self._kick()
        await self._idle.wait()
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=True)
        for runtime in self._runtimes:
            if self._executes_requests:
                await runtime.aclose()  # type: ignore[union-attr]
            else:
                runtime.close()
