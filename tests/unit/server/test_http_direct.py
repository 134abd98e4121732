"""The infer endpoint answered on uvicorn's request cycle (server/protocol/http_direct.py), driven
through ferry's HTTP protocol with an in-memory transport: the answer's bytes, which requests take
the direct path and which keep the ASGI app, and what a handler that dies gets the client.

The wire behaviour against a real Triton (pipelining, 100-continue, HTTP/1.0, Connection: close)
is in tests/integration/server/test_http_wire_differential.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import numpy as np
import uvicorn
from uvicorn.server import ServerState

from server.protocol import http_infer
from server.protocol.http import create_http_app
from server.protocol.http_connection import LimitedHttpToolsProtocol, limited_protocol
from server.protocol.http_limits import HttpLimits
from server.restrictions import parse_restricted_apis
from server.types import InferenceRequest, InferenceResponse


class Transport(asyncio.Transport):
    """Collects what the server writes; `closed` once it closes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Models:
    def get(self, name: str, version: str) -> None:
        return None  # every model exists


class Ops:
    request_context = False


class DataPlane:
    """The data plane's side of an infer: y = 2x, each column `widen` times, after awaiting
    `before_answer` (when given)."""

    shared_memory = None
    repository = Models()
    ops = Ops()

    def __init__(
        self,
        before_answer: Callable[[InferenceRequest], Awaitable[None]] | None = None,
        widen: int = 1,
    ) -> None:
        self.before_answer = before_answer
        self.widen = widen
        self.infer_calls = 0

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.infer_calls += 1
        if self.before_answer is not None:
            await self.before_answer(request)
        outputs = {"y": np.repeat(request.inputs["x"] * 2, self.widen, axis=1)}
        return InferenceResponse(request.model_name, "1", outputs, id=request.id)


def infer_request(path: str = "/v2/models/m/infer", extra: bytes = b"") -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.0]}]}
    ).encode()
    return (
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n"
        % (path.encode(), len(body), extra)
    ) + body


async def connection(
    dataplane: DataPlane,
    restricted: dict[str, Any] | None = None,
    transport: Transport | None = None,
    limits: HttpLimits | None = None,
) -> tuple[LimitedHttpToolsProtocol, Transport]:
    limits = limits or HttpLimits()
    app = create_http_app(dataplane, limits, restricted=restricted)  # type: ignore[arg-type]
    config = uvicorn.Config(  # as server/app.py: uvicorn leaves the logging configuration alone
        app,
        http="httptools",
        lifespan="off",
        interface="asgi3",
        proxy_headers=False,
        log_config=None,
        log_level=None,
        access_log=False,
    )
    config.load()
    protocol_class: Any = limited_protocol(limits)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol, LimitedHttpToolsProtocol)
    transport = transport or Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def responses(written: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """(status line, header fields, body) of each response written."""
    parsed = []
    while written:
        head, _, rest = written.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        parsed.append((lines[0], fields, rest[:length]))
        written = rest[length:]
    return parsed


def test_an_infer_answer_is_one_write_with_tritons_fields() -> None:
    async def scenario() -> None:
        dataplane = DataPlane()
        protocol, transport = await connection(dataplane)
        protocol.data_received(infer_request() + infer_request())  # two, pipelined
        await settle()
        answers = responses(transport.written)
        assert [status for status, _, _ in answers] == ["HTTP/1.1 200 OK"] * 2
        _, fields, body = answers[0]
        assert fields == {"content-type": "application/json", "content-length": str(len(body))}
        assert json.loads(body)["outputs"][0]["data"] == [3.0, 4.0]
        assert dataplane.infer_calls == 2 and not transport.closed

    asyncio.run(scenario())


def test_a_body_read_whole_with_its_headers_or_in_pieces_gets_the_same_answer() -> None:
    """A body that arrives with its headers is taken from the cycle; one that arrives later is
    read through `receive`: the same answers, the same 413 past --http-max-request-bytes."""

    taken_whole: list[int] = []
    real_whole_body = http_infer.whole_body

    def whole_body(*args: Any) -> bytes:
        taken_whole.append(1)
        return real_whole_body(*args)

    async def answers(limits: HttpLimits, pieces: int) -> list[tuple[str, bytes]]:
        taken_whole.clear()
        dataplane = DataPlane()
        protocol, transport = await connection(dataplane, limits=limits)
        request = infer_request()
        cut = request.index(b"\r\n\r\n") + 4 + (10 if pieces > 1 else len(request))
        for part in (request[:cut], request[cut:]):
            if part:
                protocol.data_received(part)
                await settle()
        assert taken_whole == ([1] if pieces == 1 else [])  # which path read the body
        return [(status, body) for status, _, body in responses(transport.written)]

    async def scenario() -> None:
        body_bytes = len(infer_request().partition(b"\r\n\r\n")[2])
        for limits in (HttpLimits(), HttpLimits(max_request_bytes=body_bytes - 1)):
            whole, in_pieces = await answers(limits, 1), await answers(limits, 2)
            assert whole == in_pieces
            assert len(whole) == 1
        assert whole[0][0] == "HTTP/1.1 413 Request Entity Too Large"

    with mock.patch.object(http_infer, "whole_body", whole_body):
        asyncio.run(scenario())


def test_other_routes_and_restricted_infer_requests_keep_the_asgi_app() -> None:
    async def scenario() -> None:
        restricted = parse_restricted_apis(["inference:key=secret"], "http-restricted-api")
        dataplane = DataPlane()
        protocol, transport = await connection(dataplane, restricted)
        assert protocol.infer_app is not None
        for request in (
            infer_request(),  # no key: 403 from the ASGI app
            b"GET /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nkey: secret\r\n\r\n",  # 405
            infer_request(extra=b"key: secret\r\n"),  # admitted: direct
        ):
            protocol.data_received(request)
            await settle()
        statuses = [status for status, _, _ in responses(transport.written)]
        forbidden, not_allowed = "HTTP/1.1 403 Forbidden", "HTTP/1.1 405 Method Not Allowed"
        assert statuses == [forbidden, not_allowed, "HTTP/1.1 200 OK"]
        assert dataplane.infer_calls == 1

    asyncio.run(scenario())


def test_a_handler_that_dies_answers_500_and_closes_and_the_server_goes_on() -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def hang(_: InferenceRequest) -> None:
            started.set()
            await asyncio.Event().wait()

        protocol, transport = await connection(DataPlane(hang))
        protocol.data_received(infer_request())
        await started.wait()
        (task,) = list(protocol.tasks)
        task.cancel()  # what uvicorn does to a request still running when shutdown times out
        await settle()
        assert transport.written.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert transport.closed
        # a new connection is served as before
        protocol, transport = await connection(DataPlane())
        protocol.data_received(infer_request())
        await settle()
        assert [status for status, _, _ in responses(transport.written)] == ["HTTP/1.1 200 OK"]

    asyncio.run(scenario())


def test_a_large_answer_is_not_copied_into_the_head() -> None:
    async def scenario() -> None:
        writes: list[int] = []

        class Counting(Transport):
            def write(self, data: bytes | bytearray | memoryview) -> None:
                writes.append(len(data))
                super().write(data)

        transport = Counting()
        protocol, _ = await connection(DataPlane(widen=20_000), transport=transport)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 2],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        body = header + np.ones(2, np.float32).tobytes()
        protocol.data_received(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Inference-Header-Content-Length: %d\r\n\r\n%s" % (len(body), len(header), body)
        )
        await settle()
        ((status, fields, payload),) = responses(transport.written)
        assert status == "HTTP/1.1 200 OK" and len(payload) > 160_000
        assert int(fields["inference-header-content-length"]) < 200
        assert max(writes) == len(payload)  # the payload went out as it was, after the head

    asyncio.run(scenario())
