"""CoalescingTransport on a real loopback connection: the writes of one loop pass leave in one
send, in order; large writes are not copied; close and abort keep their order."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from server.protocol.http_writes import COALESCE_LIMIT, CoalescingTransport


class CountingTransport:
    """The real transport, with its write calls counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.writes = transport, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


Scenario = Callable[[CoalescingTransport, CountingTransport], Coroutine[Any, Any, None]]


def run(scenario: Scenario) -> tuple[bytes, int]:
    """Serve one connection with `scenario`; what the client received and the number of sends."""

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        tasks: list[asyncio.Task[None]] = []

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                counting = CountingTransport(transport)
                wrapped = CoalescingTransport(counting, loop)  # type: ignore[arg-type]

                async def go() -> None:
                    await scenario(wrapped, counting)
                    done.set_result(counting.writes)

                tasks.append(loop.create_task(go()))

        server = await loop.create_server(Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        writes = await done
        received = b""
        while True:
            try:
                chunk = await loop.sock_recv(client, 1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        client.close()
        server.close()
        return received, writes

    return asyncio.run(main())


def test_writes_of_one_pass_leave_in_one_send_in_order() -> None:
    async def scenario(wrapped: CoalescingTransport, counting: CountingTransport) -> None:
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(bytearray(b"body"))
        wrapped.write(b"")
        assert wrapped.get_write_buffer_size() == 23 and counting.writes == 0
        await asyncio.sleep(0)  # the loop runs the flush
        assert counting.writes == 1
        wrapped.write(b"+second pass")
        await asyncio.sleep(0)
        wrapped.close()

    received, writes = run(scenario)
    assert received == b"HTTP/1.1 200 OK\r\n\r\nbody+second pass"
    assert writes == 2


def test_a_large_write_goes_alone_after_what_is_queued() -> None:
    large = bytes(range(256)) * (COALESCE_LIMIT // 256 + 1)

    async def scenario(wrapped: CoalescingTransport, counting: CountingTransport) -> None:
        wrapped.write(b"head")
        wrapped.write(large)
        assert counting.writes == 2  # the queued head, then the large body, at once
        wrapped.write(b"tail")
        wrapped.close()  # close sends what is queued first

    received, writes = run(scenario)
    assert received == b"head" + large + b"tail"
    assert writes == 3


def test_abort_drops_what_is_queued() -> None:
    async def scenario(wrapped: CoalescingTransport, counting: CountingTransport) -> None:
        wrapped.write(b"sent")
        await asyncio.sleep(0)
        wrapped.write(b"never sent")
        wrapped.abort()
        await asyncio.sleep(0)

    received, writes = run(scenario)
    assert received == b"sent" and writes == 1
