"""Calls a Python model makes to the server: BLS inference (one response, or the responses of a
decoupled model) and model control (`is_model_ready`, `load_model`, `unload_model`).

Each goes to the server's inference entry (the data plane), so a BLS request passes the called
model's validation, scheduler, statistics and metrics like a client's. Errors go back to the model
as error responses with Triton's wording.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from server.errors import ErrorKind, ServingError
from server.runtimes.python import ipc
from server.services import InferenceServices
from server.types import InferenceRequest, RequestedOutput

SEQUENCE_START, SEQUENCE_END = 1, 2  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END
DECOUPLED_NEEDS_STREAM = (
    "Model {model} is using the decoupled. The current BLS request call doesn't support models "
    "using the decoupled transaction policy. Please use 'decoupled=True' argument to the 'exec' "
    "or 'async_exec' calls for decoupled models.'"
)


class ModelCalls:
    """Answers the calls of one model process over its channel (`send`)."""

    def __init__(
        self,
        services: InferenceServices | None,
        send: Callable[[Any], None],
        initialized: bool,
    ) -> None:
        self._services = services
        self._send = send
        self._initialized = initialized  # model control is for execute, not initialize

    async def answer(self, call_id: int, kind: str, payload: Any) -> None:
        """Run one call and send its answer (a stream of answers for `infer_stream`)."""
        try:
            if self._services is None:
                raise ServingError(ErrorKind.UNSUPPORTED, "this server takes no calls from models")
            if kind == "infer_stream":
                await self._stream(self._services, call_id, payload)
                return
            result = (True, await self._run(self._services, kind, payload))
        except ServingError as exc:
            result = (False, exc.message)
        self._reply((ipc.CALL_RESULT, call_id, result))

    def _reply(self, message: Any) -> None:
        with contextlib.suppress(ServingError):  # the process went away: nobody waits for it
            self._send(message)

    async def _run(self, services: InferenceServices, kind: str, payload: Any) -> Any:
        if kind == "infer":
            return await self._infer(services, payload)
        if kind == "model_ready":
            return services.model_ready(payload[0], payload[1])
        if kind in ("load", "unload"):
            if not self._initialized:
                raise ServingError(
                    ErrorKind.UNSUPPORTED,
                    "load_model and unload_model work from execute, not from initialize",
                )
            if kind == "load":
                name, config, files = payload
                await services.load_model(name, config or None, files or None)
            else:
                await services.unload_model(payload[0])
            return None
        raise ServingError(ErrorKind.UNSUPPORTED, f"unknown call '{kind}'")

    async def _infer(self, services: InferenceServices, payload: Any) -> Any:
        request = bls_request(payload)
        try:
            decoupled = services.check_request(request)
        except ServingError as exc:
            return not_run(request.model_name, exc.message)
        if decoupled:
            return not_run(
                request.model_name, DECOUPLED_NEEDS_STREAM.format(model=request.model_name)
            )
        try:
            response = await services.infer(request)
        except ServingError as exc:
            return failed(exc)
        return (list(response.outputs.items()), None, "{}")

    async def _stream(self, services: InferenceServices, call_id: int, payload: Any) -> None:
        """Each response as a CALL_STREAM message (errors included), then the end marker."""
        request = bls_request(payload)
        try:
            services.check_request(request)
        except ServingError as exc:
            self._reply((ipc.CALL_STREAM, call_id, not_run(request.model_name, exc.message), True))
            return
        try:
            async for response in services.infer_stream(request):
                item = (
                    failed(response)
                    if isinstance(response, ServingError)
                    else (list(response.outputs.items()), None, "{}")
                )
                self._reply((ipc.CALL_STREAM, call_id, item, False))
        except ServingError as exc:
            self._reply((ipc.CALL_STREAM, call_id, failed(exc), False))
        self._reply((ipc.CALL_STREAM, call_id, None, True))


def parameters_of(text: str) -> Mapping[str, Any]:
    """Request or response parameters from their JSON text ({} when empty or not an object)."""
    if not text or text == "{}":
        return {}
    parsed = json.loads(text)
    return parsed if isinstance(parsed, dict) else {}


def bls_request(payload: Any) -> InferenceRequest:
    """The InferenceRequest a model's `pb_utils.InferenceRequest` describes."""
    (
        model_name,
        model_version,
        request_id,
        correlation_id,
        inputs,
        requested,
        parameters,
        flags,
        timeout_us,
    ) = payload
    return InferenceRequest(
        model_name=model_name,
        model_version="" if model_version < 0 else str(model_version),
        inputs=dict(inputs),
        id=request_id,
        requested_outputs=tuple(RequestedOutput(name) for name in requested) or None,
        parameters=parameters_of(parameters),
        timeout_us=int(timeout_us),
        protocol="bls",
        sequence_id=correlation_id,
        sequence_start=bool(flags & SEQUENCE_START),
        sequence_end=bool(flags & SEQUENCE_END),
    )


def failed(error: ServingError) -> Any:
    """An error response payload keeping the error's kind and message."""
    return ([], (error.kind.name, error.message), "{}")


def not_run(model_name: str, message: str) -> Any:
    """The error a BLS call gets for a request that never ran (Triton's wording)."""
    if "is not found" in message or "has no available versions" in message:
        message = f"Failed for execute the inference request. Model '{model_name}' is not ready."
    return ([], ("INTERNAL", f"Model {model_name} - Error when running inference: {message}"), "{}")
