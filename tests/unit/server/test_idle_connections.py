"""Idle keep-alive connections are closed by a sweep (server/protocol/http_connection.py): after
the timeout and not before, never while requests keep coming, fresh connections included."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, cast

import uvicorn

from server.protocol.http_connection import (
    IdleConnections,
    LimitedHttpToolsProtocol,
    limited_protocol,
)
from server.protocol.http_limits import HttpLimits


class FakeConnection:
    """What the sweep uses of a connection: its loop and its keep-alive handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed_at: float | None = None

    def timeout_keep_alive_handler(self) -> None:
        assert self.closed_at is None, "closed twice"
        self.closed_at = self.loop.time()


def run(scenario: Any) -> None:
    asyncio.run(scenario())


def test_an_idle_connection_is_closed_after_the_timeout_and_not_before() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        idle = IdleConnections(0.2)
        first, second = FakeConnection(loop), FakeConnection(loop)
        started = loop.time()
        idle.add(cast(LimitedHttpToolsProtocol, first))
        await asyncio.sleep(0.1)
        idle.add(cast(LimitedHttpToolsProtocol, second))
        await asyncio.sleep(0.05)
        assert first.closed_at is None and second.closed_at is None
        await asyncio.sleep(0.5)
        assert first.closed_at is not None and second.closed_at is not None
        # at the timeout, up to one sweep interval (a quarter of it) late
        assert 0.2 <= first.closed_at - started <= 0.2 + idle.interval_s + 0.05
        assert 0.3 <= second.closed_at - started <= 0.3 + idle.interval_s + 0.05
        assert len(idle) == 0
        assert idle._timer is None  # no sweep runs while nothing is idle

    run(scenario)


def test_a_connection_busy_again_is_not_closed_and_its_idle_time_starts_over() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        idle = IdleConnections(0.2)
        connection = FakeConnection(loop)
        as_protocol = cast(LimitedHttpToolsProtocol, connection)
        for _ in range(6):  # a request every 0.1 s for 0.6 s: three timeouts' worth
            idle.add(as_protocol)
            await asyncio.sleep(0.1)
            idle.discard(as_protocol)
        assert connection.closed_at is None
        went_idle = loop.time()
        idle.add(as_protocol)
        await asyncio.sleep(0.4)
        assert connection.closed_at is not None
        assert connection.closed_at - went_idle >= 0.2

    run(scenario)


def test_a_real_listener_keeps_a_busy_connection_and_closes_idle_ones() -> None:
    """uvicorn with ferry's protocol on loopback, a 0.3 s keep-alive timeout: a client sending
    a request every 0.1 s keeps its connection, and so does one waiting 0.6 s for an answer; a
    fresh silent connection and a finished one are closed."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(0.6)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = HttpLimits(keepalive_timeout_s=0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app,
        http=limited_protocol(limits),
        interface="asgi3",
        lifespan="off",
        log_config=None,
    )
    server = uvicorn.Server(config)

    def request(sock: socket.socket, path: bytes = b"/") -> bytes:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
        return sock.recv(4096)

    def client() -> tuple[bool, bool, bool]:
        busy = socket.create_connection(("127.0.0.1", port))
        silent = socket.create_connection(("127.0.0.1", port))
        finished = socket.create_connection(("127.0.0.1", port))
        assert request(finished).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 1.2
        busy_kept = True
        while time.monotonic() < deadline:
            answer = request(busy)
            busy_kept = busy_kept and answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.1)
        answer = request(busy, b"/slow")  # a request longer than the keep-alive timeout
        busy_kept = busy_kept and answer.startswith(b"HTTP/1.1 200")
        silent.settimeout(2)
        finished.settimeout(2)
        closed = silent.recv(1) == b"", finished.recv(1) == b""
        for sock in (busy, silent, finished):
            sock.close()
        return busy_kept, *closed

    async def scenario() -> tuple[bool, bool, bool]:
        # the listener listens already: the client's connections wait in its backlog until
        # the server accepts them
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            return await asyncio.to_thread(client)
        finally:
            server.should_exit = True
            await serving

    busy_kept, silent_closed, finished_closed = asyncio.run(scenario())
    assert busy_kept
    assert silent_closed and finished_closed
