"""DataPlane: the transport-independent server API (health, metadata, config, infer, statistics,
repository control). HTTP and gRPC both call it; neither knows how a model runs.

A request is validated against the model's specs BEFORE it joins a batch, so a bad request never
fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import numpy as np

from monitoring.observer import (
    FAILURE_BACKEND,
    FAILURE_CANCELED,
    FAILURE_OTHER,
    FAILURE_REJECTED,
    RequestRecord,
)
from server.batching import RequestTiming
from server.classification import classify
from server.errors import ErrorKind, ServingError, WorkerUnreachable, invalid
from server.model import ModelVersion
from server.observers import ObserverFanout
from server.operations import CacheLookup, Operations
from server.repository import ModelRepository, parse_version
from server.repository_format import ModelConfig
from server.sequence import SequenceBatcher
from server.settings import ModelControlMode
from server.shared_memory import SharedMemoryManager, require_enabled, select_regions
from server.trace_settings import Change
from server.tracing import RequestTrace, enter_steps, leave_steps
from server.types import InferenceRequest, InferenceResponse, datatype_of
from server.version import __version__

SERVER_NAME = "ferry"
SEQUENCE_DRAIN_POLL_S = 0.02
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)


class Cluster(Protocol):
    """The other workers of `ferry serve --workers N` (server/workers/link.py), as the data
    plane sees them: one server's readiness, statistics, repository control, client shared
    memory regions and run-time log and trace settings."""

    every_worker_ready: bool

    async def statistics(self, name: str, version: str) -> list[dict[str, Any]]: ...

    async def load_model(
        self, name: str, config_json: str | None, files: Mapping[str, bytes] | None
    ) -> None: ...

    async def unload_model(self, name: str) -> None: ...

    async def register_shared_memory(
        self, name: str, key: str, offset: int, byte_size: int
    ) -> None: ...

    async def unregister_shared_memory(self, name: str) -> None: ...

    async def shared_memory_status(self) -> list[dict[str, Any]]: ...

    async def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]: ...

    async def update_trace_settings(
        self, model: str, changes: Mapping[str, Change]
    ) -> dict[str, Any]: ...


class SequenceOwners(Protocol):
    """Which worker of `ferry serve --workers N` runs each sequence, and under
    --shared-batching each model (server/workers/sequences.py): requests another worker owns
    are forwarded to it."""

    def owner(self, sequence_id: int | str) -> int | None: ...

    def model_owner(self, model_name: str) -> int | None: ...

    async def forward(self, slot: int, request: InferenceRequest) -> InferenceResponse: ...

    def forward_stream(
        self, slot: int, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]: ...


class DataPlane:
    """Everything a transport can ask of the server."""

    def __init__(
        self,
        repository: ModelRepository,
        fanout: ObserverFanout,
        strict_readiness: bool = True,
        shared_memory: SharedMemoryManager | None = None,
        operations: Operations | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.repository = repository
        self.fanout = fanout
        self.strict_readiness = strict_readiness
        # client shared memory regions (--allow-client-shm); None: the extension is off
        self.shared_memory = shared_memory
        self.cluster = cluster  # None: this process is the whole server
        self.sequence_owners: SequenceOwners | None = None  # set by a worker of several
        # --shared-batching: each model's requests run in its owner worker (one batcher)
        self.shared_batching = False
        # request log, traces, response cache, log settings (server/operations.py)
        self.ops = operations or Operations()
        self.started = False
        self.accepting = True
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        repository.services = self  # BLS calls and ensemble steps come back through here

    # --- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not (self.started and self.accepting):
            return False
        if self.cluster is not None and not self.cluster.every_worker_ready:
            return False
        return self.repository.all_ready() if self.strict_readiness else True

    def server_metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shared_memory is not None:
            extensions.insert(extensions.index("model_configuration") + 1, "system_shared_memory")
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for any model or version that is not READY (unknown, unloaded, or a name no
        model can have), as Triton answers; only a malformed version string is an error."""
        parse_version(version)
        try:
            self.repository.get(name, version)
        except ServingError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        versions = (
            [model.version]
            if version
            else sorted(
                (v.version for v in self.repository.ready_versions() if v.name == name), key=int
            )
        )
        return {
            "name": name,
            "versions": versions,
            "platform": model.platform,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in model.inputs.values()
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                for s in model.outputs.values()
            ],
        }

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        return self.repository.get(name, version).config

    async def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics: this process's, or every worker's added up. Under `--workers N`
        a model that any worker serves has statistics whichever worker is asked: while it
        loads, its owner may already answer its requests (and its readiness) while this worker
        still waits for the owner's verdict."""
        if self.cluster is None:
            return self.local_statistics(name, version)  # unknown models fail here
        merged = await self.cluster.statistics(name, version)
        if not merged and name:  # no worker serves it: the single process's answer
            self.local_statistics(name, version)
        return merged

    def local_statistics_or_none(self, name: str, version: str) -> list[dict[str, Any]]:
        """This worker's part of a gathered statistics call ([] where it lacks the model)."""
        try:
            return self.local_statistics(name, version)
        except ServingError:
            return []

    def local_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """This process's statistics."""
        if not name:
            return [v.statistics.as_json() for v in self.repository.ready_versions()]
        try:
            model = self.repository.get(name, version)
        except ServingError as exc:
            raise invalid(f"requested model '{name}' is not available") from exc
        if not version:
            return [
                v.statistics.as_json() for v in self.repository.ready_versions() if v.name == name
            ]
        return [model.statistics.as_json()]

    # --- repository control --------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    def _require_explicit(self, action: str) -> None:
        if self.repository.mode != ModelControlMode.EXPLICIT:
            raise ServingError(  # Triton's words in modes poll and none alike
                ErrorKind.UNAVAILABLE,
                f"explicit model {action} is not allowed if polling is enabled",
            )

    async def load_model(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        self._require_explicit("load / unload")
        if self.cluster is not None:
            await self.cluster.load_model(name, config_json, files)
        else:
            await self.repository.load(name, config_json, files)

    async def unload_model(self, name: str) -> None:
        self._require_explicit("load / unload")
        if self.cluster is not None:
            await self.cluster.unload_model(name)
        else:
            await self.repository.unload(name)

    # --- inference -----------------------------------------------------------------------------

    def _sequence_slot(self, sequence_id: int | str) -> int | None:
        """The worker that runs a sequence's steps: its owner (`crc32(correlation ID) % N`),
        so the sequences spread over the workers; None: this one. Under --shared-batching
        always None: a sequence model is loaded in its owner only, whose one sequence batcher
        the other workers reach through the model's scheduler (server/workers/remote_model.py).
        """
        owners = self.sequence_owners
        assert owners is not None
        return None if self.shared_batching else owners.owner(sequence_id)

    def _runs_sequences(self, request: InferenceRequest) -> bool:
        try:
            model = self.repository.get(request.model_name, request.model_version)
        except ServingError:
            return False  # answered (and counted) here
        return isinstance(model.scheduler, SequenceBatcher)

    def _stream_owner(
        self, request: InferenceRequest, model: ModelVersion
    ) -> tuple[int, bool] | None:
        """The worker to forward a decoupled model's request to, and whether it must run there:
        a sequence's owner (it holds the sequence's state), or under --shared-batching the
        model's owner (the only one that loads it; a decoupled ensemble, which every worker
        runs, runs here while that one restarts). None: run it here. The
        other models' requests run here, their model's scheduler sending them to the owner
        (server/workers/remote_model.py)."""
        owners = self.sequence_owners
        if owners is None:
            return None
        if isinstance(model.scheduler, SequenceBatcher):
            slot = self._sequence_slot(request.sequence_id) if request.sequence_id else None
            return None if slot is None else (slot, True)
        if self.shared_batching:  # a model loaded in its owner only must run there
            slot = owners.model_owner(request.model_name)
            return None if slot is None else (slot, model.runs_elsewhere)
        return None

    def submit_now(
        self,
        model_name: str,
        version: str,
        inputs: Mapping[str, np.ndarray] | None,
        rows: int,
        priority: int,
        timeout_us: int,
        request: InferenceRequest | None,
    ) -> asyncio.Future[tuple[Any, RequestTiming]]:
        """A request another worker took and validated, of a model this worker owns
        (--shared-batching): queue it in this worker's batcher with every other one, and return
        the future of its outputs and timing (draining waits for it). The worker that took it
        counts it; the batch is counted here. No task per request: the owner answers from the
        future's callback (server/workers/channel.py)."""
        model = self.repository.get(model_name, version)
        if model.runs_elsewhere:
            raise ServingError(
                ErrorKind.UNAVAILABLE, f"model '{model_name}' is not run by this worker"
            )
        if inputs is None:
            assert request is not None
            inputs = request.inputs
        # a Batcher's future as it is; any other scheduler's coroutine in a task
        future = asyncio.ensure_future(
            model.scheduler.submit(inputs, rows, priority, timeout_us, request)
        )
        self._enter()
        future.add_done_callback(self._left)
        return future

    def _left(self, _: object) -> None:
        self._leave()

    def _cache_owner(self, model: ModelVersion) -> int | None:
        """The worker whose response cache holds a cached model's answers under --workers N:
        the model's owner (`crc32(name) % N`), which runs its requests whole (validation, cache,
        statistics, request log) as a single server would, so a repeated request hits whichever
        worker its connection reached. None: this worker (or a single process)."""
        owners = self.sequence_owners
        return None if owners is None else owners.model_owner(model.name)

    async def infer_forwarded(self, request: InferenceRequest) -> InferenceResponse:
        """A request another worker accepted and forwarded here (a sequence's step, a cached
        model's request): it runs even while this worker drains."""
        return await self.infer(request, accepted=True)

    async def _forward(self, slot: int, request: InferenceRequest) -> InferenceResponse:
        """Run a request another worker owns there (draining waits for it)."""
        assert self.sequence_owners is not None
        self._enter()
        try:
            return await self.sequence_owners.forward(slot, request)
        finally:
            self._leave()

    async def _forward_stream(
        self, slot: int, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        """Stream a decoupled model's request from the worker that owns it (draining waits
        for it)."""
        assert self.sequence_owners is not None
        self._enter()
        try:
            async for item in self.sequence_owners.forward_stream(slot, request):
                yield item
        finally:
            self._leave()

    def _enter(self) -> None:
        """A request is in flight (draining waits until none is)."""
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()

    def _check_accepting(self, request: InferenceRequest) -> None:
        """While the server drains, only requests of sequence models pass (their scheduler, here
        or under --shared-batching in the model's owner, serves live sequences and refuses new
        ones, as Triton's)."""
        if self.accepting:
            return
        try:
            model = self.repository.get(request.model_name, request.model_version)
        except ServingError:
            model = None
        if model is None or not model.runs_sequences:
            raise ServingError(ErrorKind.UNAVAILABLE, "Server is shutting down")

    async def infer(self, request: InferenceRequest, accepted: bool = False) -> InferenceResponse:
        """Validate, queue, run and post-process one request; observers see its outcome.
        `accepted`: another worker took it before it began to drain (it runs while this one
        drains too).

        With a response cache, a hit answers here without queueing. Traces and request lines
        cost one attribute test each when they are off."""
        if self.sequence_owners is not None and request.sequence_id:
            slot = self._sequence_slot(request.sequence_id)
            if slot is not None and self._runs_sequences(request):
                return await self._forward(slot, request)
        ops = self.ops
        started = time.perf_counter()
        try:
            if not accepted:
                self._check_accepting(request)
            model = self.repository.get(request.model_name, request.model_version)
            if model.decoupled:
                raise decoupled_unsupported(request.protocol)
        except ServingError as exc:  # not counted against the model: the log only
            ops.request_log.failure(request, request.model_name, request.model_version, 0.0, exc)
            raise
        if ops.response_cache is not None and model.uses_response_cache:
            slot = self._cache_owner(model)
            if slot is not None:
                try:
                    return await self._forward(slot, request)
                except WorkerUnreachable:  # restarting, and the request never left: run it here
                    pass
        trace = ops.tracer.start(model.name, model.version, request) if ops.tracer.active else None
        self._enter()
        cached: CacheLookup | None = None
        try:
            rows = validate_request(model, request)
            if ops.response_cache is not None and model.uses_response_cache:
                cached = ops.cache_lookup(model, request)
                if cached.outputs is not None:
                    return self._answer_from_cache(model, request, rows, started, cached, trace)
            if ops.tracer.active:  # an ensemble's steps are traced with it (server/tracing.py)
                outputs, timing = await self._submit_traced(model, request, rows, trace)
            else:
                outputs, timing = await model.scheduler.submit(
                    request.inputs, rows, request.priority, request.timeout_us, request
                )
            response_outputs = select_outputs(model, request, outputs)
        except Exception as exc:
            if isinstance(exc, ServingError):
                self._record_failure(model, request, started, exc, trace)
                raise
            # a bug, not the client's fault: one INTERNAL answer on both transports, logged once
            error = ServingError(ErrorKind.INTERNAL, f"internal error: {exc}")
            self._record_failure(model, request, started, exc, trace)
            raise error from exc
        except BaseException as exc:  # cancelled: the client went away
            self._record_failure(model, request, started, exc, trace)
            raise
        finally:
            self._leave()
        cache_s = 0.0
        if cached is not None:
            cache_s = ops.cache_insert(cached, response_outputs)
            model.statistics.record_cache_miss(cache_s)
        self._record_success(model, request, rows, started, timing, outputs, cached, cache_s)
        if trace is not None:
            self._end_trace(trace, model, timing)
        return InferenceResponse(model.name, model.version, response_outputs, request.id)

    def _end_trace(
        self,
        trace: RequestTrace,
        model: ModelVersion,
        timing: RequestTiming,
        error: BaseException | None = None,
    ) -> None:
        """Export a finished trace; an ensemble's has no compute of its own (its steps' traces
        have theirs), as in Triton."""
        trace.timing = None if model.runs_steps else timing
        trace.error, trace.ended = error, time.perf_counter()
        self.ops.tracer.finish(trace)

    async def _submit_traced(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        rows: int,
        trace: RequestTrace | None,
    ) -> tuple[Any, RequestTiming]:
        """Submit while tracing is on: the steps an ensemble runs meanwhile are its trace's
        children (or not traced when it is not)."""
        if trace is not None:
            trace.queued = time.perf_counter()
        token = enter_steps(trace, model.runs_steps)
        try:
            return await model.scheduler.submit(
                request.inputs, rows, request.priority, request.timeout_us, request
            )
        finally:
            if token is not None:
                leave_steps(token)

    async def infer_stream(
        self, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        """The responses of one request, in order, the last one final: many (or none but the
        final flag) for a decoupled model, one for the others. A ServingError item is a failed
        response inside the stream (a decoupled model goes on after it); an error raised before
        the first item fails the whole request."""
        model = self.repository.get(request.model_name, request.model_version)
        if not model.decoupled:
            yield await self.infer(request)
            return
        if self.sequence_owners is not None:
            owner = self._stream_owner(request, model)
            if owner is not None:
                try:
                    async for forwarded in self._forward_stream(owner[0], request):
                        yield forwarded
                    return
                except WorkerUnreachable:  # raised before the request left: nothing yielded
                    if owner[1]:
                        raise
        ops = self.ops
        started = time.perf_counter()
        try:
            self._check_accepting(request)
        except ServingError as exc:
            ops.request_log.failure(request, model.name, model.version, 0.0, exc)
            raise
        trace = ops.tracer.start(model.name, model.version, request) if ops.tracer.active else None
        self._enter()
        failure: ServingError | None = None  # the first failed response
        try:
            rows = validate_request(model, request)
            if ops.tracer.active:
                stream, timing = await self._submit_traced(model, request, rows, trace)
            else:
                stream, timing = await model.scheduler.submit(
                    request.inputs, rows, request.priority, request.timeout_us, request
                )
            async for item in stream:
                if item.error is not None:
                    failure = failure or item.error
                    yield item.error
                    continue
                outputs = select_outputs(model, request, item.outputs) if item.outputs else {}
                yield InferenceResponse(
                    model.name,
                    model.version,
                    outputs,
                    request.id,
                    {k: v for k, v in item.parameters.items() if isinstance(v, (str, int, bool))},
                    final=item.final,
                )
        except BaseException as exc:
            self._record_failure(model, request, started, exc, trace)
            raise
        finally:
            self._leave()
        if failure is not None:  # counted as a failure, as Triton (no failure record)
            elapsed = time.perf_counter() - started
            model.statistics.record_failure(elapsed)
            ops.request_log.failure(request, model.name, model.version, elapsed, failure)
        else:
            self._record_success(model, request, rows, started, timing, None)
        if trace is not None:
            self._end_trace(trace, model, timing, failure)

    def check_request(self, request: InferenceRequest) -> bool:
        """The errors `infer` raises before scheduling (unknown model, bad inputs); True when
        the model is decoupled (its responses must be streamed)."""
        model = self.repository.get(request.model_name, request.model_version)
        validate_request(model, request)
        return model.decoupled

    def _record_success(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        rows: int,
        started: float,
        timing: RequestTiming,
        outputs: Mapping[str, np.ndarray] | None,
        cached: CacheLookup | None = None,
        cache_s: float = 0.0,
    ) -> None:
        """Statistics, observers and the request log for a request that ran the model
        (`outputs` None: streamed)."""
        elapsed = time.perf_counter() - started
        model.statistics.record_success(
            rows,
            elapsed,
            timing.queue_s,
            timing.compute_input_s,
            timing.compute_infer_s,
            timing.compute_output_s,
        )
        if self.fanout:
            self.fanout.notify(
                RequestRecord(
                    model.name,
                    model.version,
                    request.protocol,
                    True,
                    rows,
                    elapsed,
                    timing.queue_s,
                    timing.compute_input_s,
                    timing.compute_infer_s,
                    timing.compute_output_s,
                    inputs=request.inputs,
                    outputs=outputs,
                    cache_hit=None if cached is None else False,
                    cache_duration_s=cache_s,
                )
            )
        if self.ops.request_log.enabled:
            self.ops.request_log.success(request, model.name, model.version, rows, elapsed)

    def _answer_from_cache(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        rows: int,
        started: float,
        cached: CacheLookup,
        trace: RequestTrace | None,
    ) -> InferenceResponse:
        """A cache hit: counted as a success and a cache hit, never as an inference."""
        assert cached.outputs is not None
        elapsed = time.perf_counter() - started
        model.statistics.record_cache_hit(elapsed, cached.lookup_s)
        if self.fanout:
            self.fanout.notify(
                RequestRecord(
                    model.name,
                    model.version,
                    request.protocol,
                    True,
                    rows,
                    elapsed,
                    cache_hit=True,
                    cache_duration_s=cached.lookup_s,
                )
            )
        if self.ops.request_log.enabled:
            self.ops.request_log.success(
                request, model.name, model.version, rows, elapsed, cache_hit=True
            )
        if trace is not None:
            trace.cache_hit, trace.ended = True, time.perf_counter()
            self.ops.tracer.finish(trace)
        return InferenceResponse(model.name, model.version, cached.outputs, request.id)

    def _record_failure(
        self,
        model: ModelVersion,
        request: InferenceRequest,
        started: float,
        exc: BaseException,
        trace: RequestTrace | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        self.ops.request_log.failure(request, model.name, model.version, elapsed, exc)
        if trace is not None:
            trace.error, trace.ended = exc, time.perf_counter()
            self.ops.tracer.finish(trace)
        model.statistics.record_failure(elapsed)
        if isinstance(exc, asyncio.CancelledError):
            reason = FAILURE_CANCELED
        elif isinstance(exc, ServingError) and exc.kind == ErrorKind.UNAVAILABLE:
            reason = FAILURE_REJECTED
        elif isinstance(exc, ServingError) and exc.kind == ErrorKind.INTERNAL:
            reason = FAILURE_BACKEND
        else:
            reason = FAILURE_OTHER
        if self.fanout:
            self.fanout.notify(
                RequestRecord(
                    model.name,
                    model.version,
                    request.protocol,
                    False,
                    0,
                    elapsed,
                    failure_reason=reason,
                )
            )

    # --- system shared memory extension --------------------------------------------------------

    async def register_shared_memory(
        self, name: str, key: str, offset: int, byte_size: int
    ) -> None:
        """Register a client's region (on every worker, before answering)."""
        manager = require_enabled(self.shared_memory)
        if self.cluster is not None:
            await self.cluster.register_shared_memory(name, key, offset, byte_size)
        else:
            manager.register(name, key, offset, byte_size)

    async def unregister_shared_memory(self, name: str = "") -> None:
        """Unregister one region, or all when `name` is empty (on every worker)."""
        if self.shared_memory is None:  # nothing is ever registered
            return
        if self.cluster is not None:
            await self.cluster.unregister_shared_memory(name)
        else:
            self.shared_memory.unregister(name)

    async def shared_memory_status(self, name: str = "") -> list[dict[str, Any]]:
        """The status of one region or of all (every worker's, each name once)."""
        if self.shared_memory is None:  # nothing is ever registered; no error, as before
            return []
        if self.cluster is not None:
            return select_regions(await self.cluster.shared_memory_status(), name)
        return self.shared_memory.status(name)

    # --- logging and trace extensions -----------------------------------------------------------

    def log_settings(self) -> dict[str, Any]:
        return self.ops.log_settings()

    async def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the log settings (of every worker); the settings now in force."""
        if self.cluster is not None:
            return await self.cluster.update_log_settings(changes)
        return self.ops.update_log_settings(changes)

    def trace_settings(self, model: str = "") -> dict[str, Any]:
        if model:
            self._require_ready(model)
        return self.ops.tracer.settings.setting(model).as_json()

    async def update_trace_settings(
        self, model: str, changes: Mapping[str, Change]
    ) -> dict[str, Any]:
        """Change the global or a model's trace setting (of every worker); the setting now in
        force."""
        if model:
            self._require_ready(model)
        if self.cluster is not None:
            return await self.cluster.update_trace_settings(model, changes)
        return self.ops.update_trace_settings(model, changes)

    def _require_ready(self, model: str) -> None:
        try:
            self.repository.get(model)
        except ServingError:
            raise invalid(f"Request for unknown model : {model}") from None

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for accepted ones and for live sequences to end (or be
        released when idle), as Triton; False if the timeout ran out."""
        self.accepting = False
        sequences = [
            v.scheduler
            for v in self.repository.ready_versions()
            if isinstance(v.scheduler, SequenceBatcher)
        ]
        for scheduler in sequences:
            scheduler.stop()
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
            while any(s.live_count for s in sequences) or not self._idle.is_set():
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(SEQUENCE_DRAIN_POLL_S)
        except TimeoutError:
            return False
        return True


def decoupled_unsupported(protocol: str) -> ServingError:
    """A decoupled model asked for one response (Triton's words per endpoint)."""
    endpoint = {"http": "HTTP end point", "grpc": "ModelInfer RPC"}.get(protocol, "This call")
    return ServingError(
        ErrorKind.UNSUPPORTED,
        f"{endpoint} doesn't support models with decoupled transaction policy",
    )


def validate_request(model: ModelVersion, request: InferenceRequest) -> int:
    """Check inputs and requested outputs against the model; return the request's rows."""
    name = model.name
    for input_name in request.inputs:
        if input_name not in model.inputs:
            raise invalid(f"unexpected inference input '{input_name}' for model '{name}'")
    missing = [n for n, s in model.inputs.items() if n not in request.inputs and not s.optional]
    if missing:
        raise invalid(missing_inputs_message(model, request))
    batching = model.max_batch_size > 0
    rows = 1
    batch_sizes = set()
    for input_name, array in request.inputs.items():
        spec = model.inputs[input_name]
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise invalid(
                f"inference input '{input_name}' data-type is '{datatype}', but model "
                f"'{name}' expects '{spec.datatype}'"
            )
        shape = array.shape
        if not _shape_fits(shape, spec.shape):
            raise invalid(
                f"unexpected shape for input '{input_name}' for model '{name}'. "
                f"Expected {list(spec.shape)}, got {list(shape)}"
            )
        if batching:
            batch_sizes.add(shape[0])
        if datatype == "BYTES" and model.utf8_strings:
            check_utf8(input_name, array)
    if batching and batch_sizes:
        if len(batch_sizes) > 1:
            raise invalid(
                f"inputs of model '{name}' disagree on the batch size: {sorted(batch_sizes)}"
            )
        rows = batch_sizes.pop()
        if rows < 1:
            raise invalid(f"inference request batch-size must be >= 1 for '{name}'")
        if rows > model.max_batch_size:
            raise invalid(
                f"inference request batch-size must be <= {model.max_batch_size} for '{name}'"
            )
    seen: set[str] = set()
    for requested in request.requested_outputs or ():
        if requested.name not in model.outputs:
            raise invalid(f"unexpected inference output '{requested.name}' for model '{name}'")
        if requested.name in seen:  # as Triton (qa/L0_http, qa/L0_grpc)
            raise invalid(f"output '{requested.name}' already exists in request")
        seen.add(requested.name)
        if requested.classification < 0:
            raise invalid(f"classification count for output '{requested.name}' must be >= 0")
    return rows


def _shape_fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """A request's shape against the model's (-1: any size); a loop, not any(): it runs for
    every input of every request."""
    if len(shape) != len(wanted):
        return False
    for got, want in zip(shape, wanted, strict=True):  # noqa: SIM110 (see above)
        if want != -1 and got != want:
            return False
    return True


def missing_inputs_message(model: ModelVersion, request: InferenceRequest) -> str:
    """Triton's message for a request that leaves out required inputs."""
    required = [n for n, spec in model.inputs.items() if not spec.optional]
    missing = [n for n in required if n not in request.inputs]
    given = len(request.inputs)
    expected = (
        f"expected {len(required)} inputs"
        if len(required) == len(model.inputs)
        else f"expected number of inputs between {len(required)} and {len(model.inputs)}"
    )

    def names(items: list[str]) -> str:
        return "[" + ",".join(f"'{item}'" for item in items) + "]"

    return (
        f"{expected} but got {given} inputs for model '{model.name}'. Got input(s) "
        f"{names(list(request.inputs))}, but missing required input(s) {names(missing)}. "
        "Please provide all required input(s)."
    )


def check_utf8(name: str, array: np.ndarray) -> None:
    """Reject non-UTF-8 strings here, before the request can fail a whole batch."""
    try:
        for item in array.reshape(-1):
            if isinstance(item, bytes):
                item.decode()
    except UnicodeDecodeError:
        raise invalid(f"input '{name}': ONNX Runtime string tensors must be valid UTF-8") from None


def select_outputs(
    model: ModelVersion, request: InferenceRequest, outputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The requested outputs in request order (all, in config order, when none were named). An
    output the model did not produce (a Python model may leave one out) is left out."""
    if request.requested_outputs is None:
        return {name: outputs[name] for name in model.outputs if name in outputs}
    selected: dict[str, np.ndarray] = {}
    for requested in request.requested_outputs:
        if requested.name not in outputs:
            continue
        array = outputs[requested.name]
        if requested.classification:
            array = classify(
                array,
                requested.classification,
                model.max_batch_size > 0,
                model.labels.get(requested.name),
            )
        selected[requested.name] = array
    return selected
