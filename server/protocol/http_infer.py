"""The infer endpoint as a raw ASGI handler in front of the FastAPI app.

Profiling `ferry serve` under load showed FastAPI/Starlette's middleware stack spending about five
times as long per request as the infer handler itself, so POST .../infer is dispatched straight
to this handler; every other route goes to FastAPI. `--http-restricted-api` is checked here,
in front of both, so it covers every route.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson

from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError, invalid
from server.protocol.http_access import HttpAccess
from server.protocol.http_codec import (
    OutputEncoding,
    choose_response_encoding,
    compress,
    decode_request,
    decompress,
    encode_response,
    parse_header_length,
)
from server.protocol.status import HTTP_STATUS_BY_KIND
from server.protocol.tensors import array_from_bytes
from server.types import ELEMENT_SIZE_BY_DATATYPE, InferenceRequest

logger = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([0-9]+))?/infer$")
JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


async def handle_infer(
    dataplane: DataPlane,
    name: str,
    version: str,
    headers: Mapping[str, str],
    body: bytes,
    client: tuple[str, int] | None = None,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Decode, infer, encode: the response body and its headers (status 200)."""
    header_length = parse_header_length(headers.get("inference-header-content-length"), len(body))
    if header_length == 0:
        inference_request, encoding = _raw_binary_request(dataplane, name, version, body)
    else:
        inference_request, encoding = decode_request(
            body, header_length, name, version, dataplane.shared_memory
        )
    if dataplane.ops.request_context:  # request log or traces: who asked, and in which trace
        inference_request = dataclasses.replace(
            inference_request,
            client=f"{client[0]}:{client[1]}" if client else "",
            traceparent=headers.get("traceparent", ""),
        )
    response = await dataplane.infer(inference_request)
    payload, json_length = encode_response(response, encoding, dataplane.shared_memory)
    response_headers = [(b"content-type", JSON_TYPE if json_length is None else BINARY_TYPE)]
    if json_length is not None:
        response_headers.append((b"inference-header-content-length", b"%d" % json_length))
    algorithm = choose_response_encoding(headers.get("accept-encoding"))
    if algorithm is not None:
        payload = compress(payload, algorithm)
        response_headers.append((b"content-encoding", algorithm.encode()))
    return payload, response_headers


def _raw_binary_request(
    dataplane: DataPlane, name: str, version: str, body: bytes
) -> tuple[InferenceRequest, OutputEncoding]:
    """Inference-Header-Content-Length: 0 — the body is the only input's data, batch 1."""
    model = dataplane.repository.get(name, version)
    if len(model.inputs) != 1:
        raise invalid(
            f"raw binary request needs a model with exactly one input; '{name}' has "
            f"{len(model.inputs)}"
        )
    spec = next(iter(model.inputs.values()))
    batch = (1,) if model.max_batch_size > 0 else ()
    dims = list(spec.shape[len(batch) :])
    variable = [index for index, dim in enumerate(dims) if dim == -1]
    if spec.datatype == "BYTES" and dims != [1]:
        raise invalid(
            f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
        )
    if len(variable) > 1:
        raise invalid(
            f"The shape of the raw input '{spec.name}' can not be deduced because there are "
            "more than one variable-sized dimension"
        )
    if variable:  # Triton deduces one variable dim from the body's size
        row_bytes = math.prod(d for d in dims if d != -1) * ELEMENT_SIZE_BY_DATATYPE[spec.datatype]
        dims[variable[0]] = len(body) // row_bytes if row_bytes else 0
    array = array_from_bytes(spec.name, body, spec.datatype, (*batch, *dims))
    return InferenceRequest(name, version, {spec.name: array}), OutputEncoding(True, {})


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo gzip/deflate; refuse any other Content-Encoding (Triton: 501)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "deflate"):
        return decompress(body, encoding, limit)
    raise ServingError(
        ErrorKind.UNSUPPORTED,
        f"unsupported Content-Encoding '{encoding}'; supported: gzip, deflate",
    )


async def read_raw_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The raw request body from ASGI `receive`, refused past `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise invalid(
            f"request body of {declared} bytes exceeds the maximum of {limit} bytes "
            "(--http-max-request-bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise invalid(
                f"request body exceeds the maximum of {limit} bytes (--http-max-request-bytes)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_error(send: Send, status: int, message: str) -> None:
    """A Triton-style `{"error": message}` answer, straight on ASGI."""
    payload = orjson.dumps({"error": message})
    headers = [(b"content-type", JSON_TYPE), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class InferFastPath:
    """ASGI app: .../infer handled directly (POST only), everything else by `fallback` (FastAPI)."""

    def __init__(
        self,
        fallback: ASGIApp,
        dataplane: DataPlane,
        max_request_bytes: int,
        access: HttpAccess | None = None,
    ) -> None:
        self.fallback = fallback
        self.dataplane = dataplane
        self.limit = max_request_bytes
        # None when nothing is restricted: then neither path costs more than one test
        self.access = access
        self.infer_gate = access.gate("inference") if access is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                refusal = (
                    None if self.infer_gate is None else self.infer_gate.refusal(scope["headers"])
                )
                if refusal is not None:
                    await send_error(send, 403, refusal)
                elif scope["method"] == "POST":
                    await self._infer(scope, receive, send, match.group(1), match.group(2) or "")
                else:
                    await send_error(send, 405, "Method Not Allowed")
                return
            if self.access is not None:
                refusal = self.access.refusal(scope)
                if refusal is not None:
                    await send_error(send, 403, refusal)
                    return
        await self.fallback(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str
    ) -> None:
        headers = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope["headers"]
        }
        try:
            body = decode_body(
                await read_raw_body(receive, headers, self.limit),
                headers.get("content-encoding"),
                self.limit,
            )
            payload, response_headers = await handle_infer(
                self.dataplane, name, version, headers, body, scope.get("client")
            )
            status = 200
        except ClientDisconnected:
            return
        except ServingError as exc:
            status = HTTP_STATUS_BY_KIND[exc.kind]
            payload = orjson.dumps({"error": exc.message})
            response_headers = [(b"content-type", JSON_TYPE)]
            if exc.kind == ErrorKind.UNSUPPORTED and "Content-Encoding" in exc.message:
                response_headers.append((b"accept-encoding", b"gzip, deflate"))
        except Exception as exc:  # never let one request take the connection down silently
            logger.exception("infer request for '%s' failed", name)
            status = 500
            payload = orjson.dumps({"error": f"internal error: {exc}"})
            response_headers = [(b"content-type", JSON_TYPE)]
        response_headers.append((b"content-length", b"%d" % len(payload)))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
