"""A lean HTTP/1.1 keep-alive client on asyncio: pre-encoded requests, callbacks on responses.

The load loop sends the same few request byte strings over and over, so nothing is encoded per
request; a response is parsed only as far as its status and length. One connection carries one
request at a time (HTTP/1.1 without pipelining), as perf_analyzer's HTTP client does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 31

ResponseCallback = Callable[["HttpConnection", int, bytes], None]
CONNECTION_ERROR = 0  # status recorded when the connection fails before a response


class HttpProtocolError(Exception):
    """The server sent something that is not an HTTP/1.1 response."""


def encode_request(
    method: str, path: str, host: str, headers: dict[str, str], body: bytes
) -> bytes:
    """One complete request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; `send` one request, `on_response` fires when it is answered."""

    def __init__(self, on_response: ResponseCallback, keep_body: bool = False) -> None:
        self.on_response = on_response
        self.keep_body = keep_body  # bodies are dropped unless asked for (metadata, errors)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._status = 0
        self._remaining = -1  # body bytes still to come; -1: reading the head
        self._chunked = False
        self._close_after = False
        self._body = bytearray()
        self.tag: object = None  # the caller's per-connection state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.on_response(self, CONNECTION_ERROR, str(exc or "connection closed").encode())
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        """Write one request (the previous one must be answered)."""
        if self.transport is None:
            self.busy = True
            self.connection_lost(ConnectionError("connection closed"))
            return
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._buffer and self._parse():
                pass
        except HttpProtocolError as exc:
            if self.busy:
                self.busy = False
                self.on_response(self, CONNECTION_ERROR, str(exc).encode())
            self.close()

    def _parse(self) -> bool:
        """Consume what the buffer holds; True when a response completed and more may follow."""
        buffer = self._buffer
        if self._remaining < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise HttpProtocolError("response head too large")
                return False
            self._read_head(bytes(buffer[:end]))
            del buffer[: end + 4]
        if self._chunked:
            return self._read_chunks()
        take = min(self._remaining, len(buffer))
        if self.keep_body or self._status != 200:
            self._body += buffer[:take]
        del buffer[:take]
        self._remaining -= take
        if self._remaining > 0:
            return False
        self._finish()
        return True

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise HttpProtocolError(f"not an HTTP/1.1 response: {status_line[:40]!r}")
        self._status = int(status_line[9:12])
        self._remaining, self._chunked, self._close_after = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                self._remaining = int(value.strip())
                if self._remaining > MAX_BODY_BYTES:
                    raise HttpProtocolError("response body too large")
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif key == b"connection" and value.strip().lower() == b"close":
                self._close_after = True

    def _read_chunks(self) -> bool:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return False
                del buffer[: trailer_end + 4]
                self._finish()
                return True
            if len(buffer) < line_end + 2 + size + 2:
                return False
            if self.keep_body or self._status != 200:
                self._body += buffer[line_end + 2 : line_end + 2 + size]
            del buffer[: line_end + 2 + size + 2]

    def _finish(self) -> None:
        status, body = self._status, bytes(self._body)
        self._remaining, self._chunked, self._body = -1, False, bytearray()
        self.busy = False
        close_after = self._close_after
        self.on_response(self, status, body)
        if close_after:
            self.close()


async def connect(
    host: str, port: int, on_response: ResponseCallback, keep_body: bool = False
) -> HttpConnection:
    """Open one connection (TCP_NODELAY is asyncio's default for TCP)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: HttpConnection(on_response, keep_body), host, port
    )
    return protocol


class HttpExchange:
    """Awaitable one-off requests (metadata, statistics) on their own keep-alive connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connection: HttpConnection | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._lock = asyncio.Lock()

    def _answered(self, _: HttpConnection, status: int, body: bytes) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, body))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection failed."""
        async with self._lock:
            if self._connection is None or self._connection.transport is None:
                self._connection = await connect(self.host, self.port, self._answered, True)
            self._waiter = asyncio.get_running_loop().create_future()
            self._connection.send(
                encode_request(method, path, f"{self.host}:{self.port}", headers or {}, body)
            )
            return await self._waiter

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
