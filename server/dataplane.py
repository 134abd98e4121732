"""DataPlane: the transport-independent server API (health, metadata, config, infer, statistics,
repository control). HTTP and gRPC both call it; neither knows how a model runs.

A request is validated against the model's specs BEFORE it joins a batch, so a bad request never
fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

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
from server.errors import ErrorKind, ServingError, invalid
from server.model import ModelVersion
from server.observers import ObserverFanout
from server.operations import CacheLookup, Operations
from server.repository import ModelRepository
from server.repository_format import ModelConfig
from server.settings import ModelControlMode
from server.shared_memory import SharedMemoryManager
from server.trace_settings import Change
from server.tracing import RequestTrace
from server.types import InferenceRequest, InferenceResponse, datatype_of
from server.version import __version__

SERVER_NAME = "ferry"
EXTENSIONS = (
    "classification",
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


class DataPlane:
    """Everything a transport can ask of the server."""

    def __init__(
        self,
        repository: ModelRepository,
        fanout: ObserverFanout,
        strict_readiness: bool = True,
        shared_memory: SharedMemoryManager | None = None,
        operations: Operations | None = None,
    ) -> None:
        self.repository = repository
        self.fanout = fanout
        self.strict_readiness = strict_readiness
        # client shared memory regions (--allow-client-shm); None: the extension is off
        self.shared_memory = shared_memory
        # request log, traces, response cache, log settings (server/operations.py)
        self.ops = operations or Operations()
        self.started = False
        self.accepting = True
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not (self.started and self.accepting):
            return False
        return self.repository.all_ready() if self.strict_readiness else True

    def server_metadata(self) -> dict[str, Any]:
        extensions = list(EXTENSIONS)
        if self.shared_memory is not None:
            extensions.insert(extensions.index("model_configuration") + 1, "system_shared_memory")
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repository.get(name, version)
        except ServingError as exc:
            if exc.kind == ErrorKind.NOT_FOUND and version in ("", "-1"):
                raise
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        versions = (
            [version]
            if version not in ("", "-1")
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

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        if not name:
            return [v.statistics.as_json() for v in self.repository.ready_versions()]
        try:
            model = self.repository.get(name, version)
        except ServingError as exc:
            raise invalid(f"requested model '{name}' is not available") from exc
        if version in ("", "-1"):
            return [
                v.statistics.as_json() for v in self.repository.ready_versions() if v.name == name
            ]
        return [model.statistics.as_json()]

    # --- repository control --------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    def _require_explicit(self, action: str) -> None:
        if self.repository.mode != ModelControlMode.EXPLICIT:
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"explicit model {action} is not allowed if polling is enabled"
                if self.repository.mode == ModelControlMode.POLL
                else f"explicit model {action} is not allowed in model control mode "
                f"'{self.repository.mode.value}'",
            )

    async def load_model(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        self._require_explicit("load / unload")
        await self.repository.load(name, config_json, files)

    async def unload_model(self, name: str) -> None:
        self._require_explicit("load / unload")
        await self.repository.unload(name)

    # --- inference -----------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue, run and post-process one request; observers see its outcome.

        With a response cache, a hit answers here without queueing. Traces and request lines
        cost one attribute test each when they are off."""
        ops = self.ops
        started = time.perf_counter()
        try:
            if not self.accepting:
                raise ServingError(ErrorKind.UNAVAILABLE, "Server is shutting down")
            model = self.repository.get(request.model_name, request.model_version)
        except ServingError as exc:  # no model to count it against: the log only
            ops.request_log.failure(request, request.model_name, request.model_version, 0.0, exc)
            raise
        trace = ops.tracer.start(model.name, model.version, request) if ops.tracer.active else None
        self._inflight += 1
        self._idle.clear()
        cached: CacheLookup | None = None
        try:
            rows = validate_request(model, request)
            if ops.response_cache is not None and model.uses_response_cache:
                cached = ops.cache_lookup(model, request)
                if cached.outputs is not None:
                    return self._answer_from_cache(model, request, rows, started, cached, trace)
            if trace is not None:
                trace.queued = time.perf_counter()
            outputs, timing = await model.batcher.submit(
                request.inputs, rows, request.priority, request.timeout_us
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
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        cache_s = 0.0
        if cached is not None:
            cache_s = ops.cache_insert(cached, response_outputs)
            model.statistics.record_cache_miss(cache_s)
        self._record_success(model, request, rows, started, timing, outputs, cached, cache_s)
        if trace is not None:
            trace.timing, trace.ended = timing, time.perf_counter()
            ops.tracer.finish(trace)
        return InferenceResponse(model.name, model.version, response_outputs, request.id)

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
        """Statistics, observers and the request log for a request that ran the model."""
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

    # --- logging and trace extensions -----------------------------------------------------------

    def log_settings(self) -> dict[str, Any]:
        return self.ops.log_settings()

    def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self.ops.update_log_settings(changes)

    def trace_settings(self, model: str = "") -> dict[str, Any]:
        if model:
            self._require_ready(model)
        return self.ops.tracer.settings.setting(model).as_json()

    def update_trace_settings(self, model: str, changes: Mapping[str, Change]) -> dict[str, Any]:
        if model:
            self._require_ready(model)
        return self.ops.update_trace_settings(model, changes)

    def _require_ready(self, model: str) -> None:
        try:
            self.repository.get(model)
        except ServingError:
            raise invalid(f"Request for unknown model : {model}") from None

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for accepted ones; False if the timeout ran out."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True


def validate_request(model: ModelVersion, request: InferenceRequest) -> int:
    """Check inputs and requested outputs against the model; return the request's rows."""
    name = model.name
    for input_name in request.inputs:
        if input_name not in model.inputs:
            raise invalid(f"unexpected inference input '{input_name}' for model '{name}'")
    missing = [n for n, spec in model.inputs.items() if n not in request.inputs]
    if missing:
        raise invalid(
            f"expected {len(model.inputs)} inputs but got {len(request.inputs)} inputs "
            f"for model '{name}'; missing: {', '.join(missing)}"
        )
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
        if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=False)
        ):
            raise invalid(
                f"unexpected shape for input '{input_name}' for model '{name}'. "
                f"Expected {list(spec.shape)}, got {list(shape)}"
            )
        if batching:
            batch_sizes.add(shape[0])
        if datatype == "BYTES" and model.utf8_strings:
            check_utf8(input_name, array)
    if batching:
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
    for requested in request.requested_outputs or ():
        if requested.name not in model.outputs:
            raise invalid(f"unexpected inference output '{requested.name}' for model '{name}'")
        if requested.classification < 0:
            raise invalid(f"classification count for output '{requested.name}' must be >= 0")
    return rows


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
    """The requested outputs in request order (all, in config order, when none were named)."""
    if request.requested_outputs is None:
        return {name: outputs[name] for name in model.outputs}
    selected: dict[str, np.ndarray] = {}
    for requested in request.requested_outputs:
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
