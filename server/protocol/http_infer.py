"""The infer endpoint as a raw ASGI handler in front of the FastAPI app.

Profiling `ferry serve` under load showed FastAPI/Starlette's middleware stack spending about five
times as long per request as the infer handler itself, so POST .../infer is dispatched straight
to this handler; every other route goes to FastAPI. `--http-restricted-api` is checked here,
in front of both, so it covers every route. ferry's HTTP protocol goes one step further for an
admitted POST .../infer: it calls `InferFastPath.answer` on uvicorn's request cycle without the
ASGI round trip (server/protocol/http_direct.py); `__call__` serves it when that does not apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np
import orjson

from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError, invalid
from server.protocol.http_access import HttpAccess
from server.protocol.http_codec import (
    OutputEncoding,
    choose_response_encoding,
    compress,
    decode_request,
    encode_response,
    parse_header_length,
)
from server.protocol.http_limits import (
    BudgetReservation,
    BufferBudget,
    DecodeLimits,
    HttpLimits,
    RequestRejected,
)
from server.protocol.inflate import decompress_bounded
from server.protocol.status import HTTP_STATUS_BY_KIND
from server.protocol.tensors import array_from_bytes, raw_element_count
from server.types import InferenceRequest

logger = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([0-9]+))?/infer$")
JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
# Costly decodes take turns, one per event loop iteration, so that health checks and small
# requests get through between them: a JSON part over HEAVY_JSON_BYTES is parsed on the loop
# (orjson and numpy hold the GIL for a whole call; in a thread they would stall each of the loop's
# steps in turn, and --http-max-json-elements bounds one call), and binary data over
# OFFLOAD_BINARY_BYTES is decoded in a worker thread (a BYTES tensor's per-element loop yields
# the GIL every few ms). Everything smaller decodes inline: the hot path is unchanged.
HEAVY_JSON_BYTES = 64 << 10
# bodies this small are not counted in --http-max-buffered-bytes: uvicorn buffers that much per
# connection before the app reads anyway, and the hot path skips the bookkeeping
UNCOUNTED_BODY_BYTES = 64 << 10
OFFLOAD_BINARY_BYTES = 256 << 10


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


class InferDecoder:
    """Decodes infer bodies under the decode limits; costly ones take turns (see above)."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self._turn = asyncio.Semaphore(1)

    async def decode_costly(
        self, dataplane: DataPlane, name: str, version: str, header_length: int | None, body: bytes
    ) -> tuple[InferenceRequest, OutputEncoding]:
        """A body over HEAVY_JSON_BYTES of JSON or OFFLOAD_BINARY_BYTES of binary data."""
        arguments = (body, header_length, name, version, dataplane.shared_memory, self.limits)
        async with self._turn:
            if len(body) - (len(body) if header_length is None else header_length) > (
                OFFLOAD_BINARY_BYTES
            ):
                return await asyncio.to_thread(decode_request, *arguments)
            try:
                return decode_request(*arguments)
            finally:  # hold the turn across one loop iteration: the next decode waits for it
                await asyncio.sleep(0)


async def handle_infer(
    dataplane: DataPlane,
    decoder: InferDecoder,
    name: str,
    version: str,
    headers: Mapping[str, str],
    body: bytes,
    client: tuple[str, int] | None = None,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Decode, infer, encode: the response body and its headers (status 200)."""
    header_length = parse_header_length(headers.get("inference-header-content-length"), len(body))
    json_bytes = len(body) if header_length is None else header_length
    if header_length == 0:
        inference_request, encoding = _raw_binary_request(
            dataplane, name, version, body, decoder.limits
        )
        if dataplane.ops.request_context:
            inference_request = _with_context(inference_request, headers, client)
        payload, json_length = encode_response(await dataplane.infer(inference_request), encoding)
    else:
        shared_memory = dataplane.shared_memory
        # the regions the request names stay registered until its response is written
        with shared_memory.hold() if shared_memory is not None else contextlib.nullcontext():
            if json_bytes <= HEAVY_JSON_BYTES and len(body) - json_bytes <= OFFLOAD_BINARY_BYTES:
                inference_request, encoding = decode_request(
                    body, header_length, name, version, shared_memory, decoder.limits
                )
            else:  # (asyncio.to_thread copies the context: the hold sees the worker's regions)
                inference_request, encoding = await decoder.decode_costly(
                    dataplane, name, version, header_length, body
                )
            if dataplane.ops.request_context:
                inference_request = _with_context(inference_request, headers, client)
            response = await dataplane.infer(inference_request)
            payload, json_length = encode_response(response, encoding, shared_memory)
    response_headers = [(b"content-type", JSON_TYPE if json_length is None else BINARY_TYPE)]
    if json_length is not None:
        response_headers.append((b"inference-header-content-length", b"%d" % json_length))
    algorithm = choose_response_encoding(headers.get("accept-encoding"))
    if algorithm is not None:
        payload = compress(payload, algorithm)
        response_headers.append((b"content-encoding", algorithm.encode()))
    return payload, response_headers


def _with_context(
    request: InferenceRequest, headers: Mapping[str, str], client: tuple[str, int] | None
) -> InferenceRequest:
    """The request with who asked and in which trace (for the request log and traces)."""
    return dataclasses.replace(
        request,
        client=f"{client[0]}:{client[1]}" if client else "",
        traceparent=headers.get("traceparent", ""),
    )


def _raw_binary_request(
    dataplane: DataPlane, name: str, version: str, body: bytes, limits: DecodeLimits
) -> tuple[InferenceRequest, OutputEncoding]:
    """Inference-Header-Content-Length: 0 — the body is the only input's data, batch 1, its
    shape deduced as Triton deduces it (one variable dim at most; BYTES: one element)."""
    model = dataplane.repository.get(name, version)
    if len(model.inputs) != 1:
        raise invalid(
            f"Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(model.inputs)} inputs in '{name}' model configuration"
        )
    if len(body) > limits.max_input_size:
        raise invalid(
            f"Raw input has a byte_size ({len(body)} bytes) that exceeds the maximum allowed "
            f"value of {limits.max_input_size} bytes. Use --http-max-input-size to increase "
            "the limit."
        )
    spec = next(iter(model.inputs.values()))
    batch = (1,) if model.max_batch_size > 0 else ()
    dims = spec.shape[len(batch) :]
    if spec.datatype == "BYTES":  # the whole body is the one element
        if dims != (1,):
            raise invalid(
                f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
            )
        array = np.empty(batch + dims, dtype=np.object_)
        array.reshape(-1)[0] = body
        return InferenceRequest(name, version, {spec.name: array}), OutputEncoding(True, {})
    if dims.count(-1) > 1:
        raise invalid(
            f"The shape of the raw input '{spec.name}' can not be deduced because there are "
            "more than one variable-sized dimension"
        )
    if -1 in dims:
        fixed = math.prod(d for d in dims if d != -1)
        count = raw_element_count(spec.name, body, spec.datatype)
        dims = tuple(count // fixed if fixed and d == -1 else d for d in dims)
    array = array_from_bytes(spec.name, body, spec.datatype, batch + tuple(dims), model=name)
    return InferenceRequest(name, version, {spec.name: array}), OutputEncoding(True, {})


async def decode_body(
    body: bytes, content_encoding: str | None, limits: HttpLimits, reservation: BudgetReservation
) -> bytes:
    """Undo gzip/deflate (never past --http-max-input-size, as Triton; each step counted in the
    budget); refuse any other Content-Encoding (Triton: 501)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        limit = min(limits.decode.max_input_size, limits.max_request_bytes)
        flag = (
            "--http-max-input-size"
            if limit == limits.decode.max_input_size
            else "--http-max-request-bytes"
        )
        data = await decompress_bounded(body, encoding, limit, flag, reservation.grow)
        reservation.shrink(len(body))  # the compressed body is dropped once inflated
        return data
    raise ServingError(
        ErrorKind.UNSUPPORTED,
        f"unsupported Content-Encoding '{encoding}'; supported: gzip, deflate",
    )


def _too_large(size: int | str, limit: int) -> RequestRejected:
    return RequestRejected(
        413,
        f"request body of {size} bytes exceeds the maximum of {limit} bytes "
        "(--http-max-request-bytes)",
    )


async def read_raw_body(
    receive: Receive,
    headers: Mapping[str, str],
    limits: HttpLimits,
    reservation: BudgetReservation,
) -> bytes:
    """The raw request body from ASGI `receive`: 413 past --http-max-request-bytes, 503 when the
    server-wide budget has no room for it (a declared Content-Length is reserved up front; bodies
    up to UNCOUNTED_BODY_BYTES are not counted)."""
    _check_declared_length(headers, limits, reservation)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        _count_body(size, limits, reservation)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def whole_body(
    body: bytes, headers: Mapping[str, str], limits: HttpLimits, reservation: BudgetReservation
) -> bytes:
    """`read_raw_body`'s checks for a body that was read whole with its headers."""
    _check_declared_length(headers, limits, reservation)
    _count_body(len(body), limits, reservation)
    return body


def _check_declared_length(
    headers: Mapping[str, str], limits: HttpLimits, reservation: BudgetReservation
) -> None:
    limit = limits.max_request_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit():
        length = int(declared)
        if length > limit:
            raise _too_large(declared, limit)
        if length > UNCOUNTED_BODY_BYTES:
            reservation.grow(length)


def _count_body(size: int, limits: HttpLimits, reservation: BudgetReservation) -> None:
    """`size` bytes of body have arrived so far."""
    limit = limits.max_request_bytes
    if size > limit:
        raise _too_large(f"more than {limit}", limit)
    if size > reservation.held and size > UNCOUNTED_BODY_BYTES:
        reservation.grow(size - reservation.held)


async def send_error(send: Send, status: int, message: str) -> None:
    """A Triton-style `{"error": message}` answer, straight on ASGI."""
    payload = orjson.dumps({"error": message})
    headers = [(b"content-type", JSON_TYPE), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def error_payload(status: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    return status, orjson.dumps({"error": message}), [(b"content-type", JSON_TYPE)]


class InferFastPath:
    """ASGI app: .../infer handled directly (POST only), everything else by `fallback` (FastAPI)."""

    def __init__(
        self,
        fallback: ASGIApp,
        dataplane: DataPlane,
        limits: HttpLimits,
        budget: BufferBudget,
        decoder: InferDecoder,
        access: HttpAccess | None = None,
    ) -> None:
        self.fallback = fallback
        self.dataplane = dataplane
        self.limits = limits
        self.budget = budget
        self.decoder = decoder
        # None when nothing is restricted: then neither path costs more than one test
        self.access = access
        self.infer_gate = access.gate("inference") if access is not None else None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # a plain function returning the handler's coroutine (uvicorn awaits it; the server is
        # configured as ASGI 3 explicitly): one coroutine frame fewer on every resumption of
        # every request
        if scope["type"] == "http":
            route = self.infer_route(scope)
            if route is not None:
                return self._infer(scope, receive, send, *route)
            if INFER_PATH.match(scope["path"]) is not None:  # refused, or not a POST
                refusal = (
                    None if self.infer_gate is None else self.infer_gate.refusal(scope["headers"])
                )
                if refusal is not None:
                    return send_error(send, 403, refusal)
                return send_error(send, 405, "Method Not Allowed")
            if self.access is not None:
                refusal = self.access.refusal(scope)
                if refusal is not None:
                    return send_error(send, 403, refusal)
        return self.fallback(scope, receive, send)

    def infer_route(self, scope: Mapping[str, Any]) -> tuple[str, str] | None:
        """(model, version) of an admitted POST .../infer (the inference group's restriction
        met), which `__call__` and the connection (server/protocol/http_direct.py) answer; None
        for anything else."""
        if scope["method"] != "POST":
            return None
        match = INFER_PATH.match(scope["path"])
        if match is None or (
            self.infer_gate is not None and self.infer_gate.refusal(scope["headers"]) is not None
        ):
            return None
        return match.group(1), match.group(2) or ""

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str
    ) -> None:
        answer = await self.answer(scope["headers"], receive, scope.get("client"), name, version)
        if answer is None:
            return
        status, payload, response_headers = answer
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def answer(
        self,
        raw_headers: Iterable[tuple[bytes, bytes]],
        receive: Receive,
        client: tuple[str, int] | None,
        name: str,
        version: str,
        body_read: bytes | None = None,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """Read, decode, infer, encode: the status, body and headers (content-length included)
        of the answer to POST .../infer, or None when the client left before its body came.
        `body_read`: the whole body, when it was read with the headers (`receive` is not
        called then)."""
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1") for key, value in raw_headers
        }
        reservation = self.budget.reservation()
        try:
            raw_body = (
                await read_raw_body(receive, headers, self.limits, reservation)
                if body_read is None
                else whole_body(body_read, headers, self.limits, reservation)
            )
            # as Triton: an unknown model is a 404 whatever the body holds
            self.dataplane.repository.get(name, version)
            content_encoding = headers.get("content-encoding")
            body = (  # (no coroutine for the usual body that is not compressed)
                raw_body
                if content_encoding is None
                else await decode_body(raw_body, content_encoding, self.limits, reservation)
            )
            payload, response_headers = await handle_infer(
                self.dataplane, self.decoder, name, version, headers, body, client
            )
            status = 200
        except ClientDisconnected:
            return None
        except RequestRejected as exc:
            status, payload, response_headers = error_payload(exc.status, exc.message)
        except ServingError as exc:
            status, payload, response_headers = error_payload(
                HTTP_STATUS_BY_KIND[exc.kind], exc.message
            )
            if exc.kind == ErrorKind.UNSUPPORTED and "Content-Encoding" in exc.message:
                response_headers.append((b"accept-encoding", b"gzip, deflate"))
        except Exception as exc:  # never let one request take the connection down silently
            logger.exception("infer request for '%s' failed", name)
            status, payload, response_headers = error_payload(500, f"internal error: {exc}")
        finally:
            if reservation.held:
                reservation.release()
        response_headers.append((b"content-length", b"%d" % len(payload)))
        return status, payload, response_headers
