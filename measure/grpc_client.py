"""A lean gRPC client on raw HTTP/2 over asyncio: pre-serialized messages, many streams each.

Every call's header block is encoded once without the HPACK dynamic table (so it stays valid on
every stream) and every message is serialized once; a call is two frames written. Responses are
read as far as their trailers' `grpc-status`. Flow control is honoured both ways (we announce
large windows; the server's windows hold large requests back until it opens them).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import hpack

from server.protocol.grpc_wire.frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    FRAME_HEADER_BYTES,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    frame,
    literal,
    settings_frame,
    window_update,
)

OK, UNAVAILABLE, INTERNAL = 0, 14, 13
RECEIVE_FRAME_SIZE = 1 << 20
CACHED_BLOCKS = 64

# (connection, tag, grpc status, response message or error text, time the call was sent)
ResponseCallback = Callable[["GrpcConnection", object, int, bytes, float], None]


def call_headers(path: str, authority: str) -> bytes:
    """The header block of a unary call: `:method POST` and `:scheme http` from the static table,
    the rest as literals without indexing, so the block never touches the HPACK table."""
    return (
        b"\x83\x86"
        + literal(b":path", path.encode())
        + literal(b":authority", authority.encode())
        + literal(b"content-type", b"application/grpc")
        + literal(b"te", b"trailers")
    )


def grpc_message(payload: bytes) -> bytes:
    """A length-prefixed, uncompressed gRPC message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class ResponseHeaderDecoder:
    """HPACK decoding of response blocks, cached per block while the dynamic table is unchanged
    (a server repeats the same few index bytes call after call)."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._cache: dict[bytes, dict[str, str]] = {}

    def _state(self) -> tuple[int, object, int]:
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return len(entries), entries[0] if entries else None, table.maxsize

    def decode(self, block: bytes) -> dict[str, str]:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        before = self._state()
        fields = {str(name): str(value) for name, value in self._decoder.decode(block)}
        after = self._state()
        if after[0] != before[0] or after[1] is not before[1] or after[2] != before[2]:
            self._cache.clear()
        elif len(self._cache) < CACHED_BLOCKS:
            self._cache[block] = fields
        return fields


@dataclass(slots=True)
class _Stream:
    tag: object
    keep_body: bool
    pending: memoryview
    window: int
    sent_at: float = 0.0
    body: bytearray = field(default_factory=bytearray)
    status: int = -1
    message: str = ""


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying many concurrent unary calls."""

    def __init__(self, on_response: ResponseCallback) -> None:
        self.on_response = on_response
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.max_streams = 100
        self.active = 0
        self.draining = False
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._buffer = bytearray()
        self._decoder = ResponseHeaderDecoder()
        self._send_window = DEFAULT_WINDOW
        self._stream_window = DEFAULT_WINDOW
        self._max_frame = DEFAULT_MAX_FRAME
        self._blocked: list[int] = []
        self._received = 0
        self._header_stream = 0
        self._header_flags = 0
        self._header_block = bytearray()
        self._corked: list[bytes] = []

    # --- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            PREFACE
            + settings_frame(
                {
                    SETTINGS_ENABLE_PUSH: 0,
                    SETTINGS_INITIAL_WINDOW_SIZE: MAX_WINDOW,
                    SETTINGS_MAX_FRAME_SIZE: RECEIVE_FRAME_SIZE,
                }
            )
            + window_update(0, MAX_WINDOW - DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(str(exc or "connection closed")))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self.active -= 1
            self.on_response(
                self,
                stream.tag,
                UNAVAILABLE,
                str(exc or "connection closed").encode(),
                stream.sent_at,
            )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.draining

    # --- calls ---------------------------------------------------------------------------------
    def call(
        self, header_block: bytes, message: bytes, tag: object, keep_body: bool = False
    ) -> None:
        """Start one unary call (`message` already length-prefixed)."""
        stream_id = self._next_id
        self._next_id += 2
        stream = _Stream(tag, keep_body, memoryview(message), self._stream_window)
        self._streams[stream_id] = stream
        self.active += 1
        if self.transport is None:
            self._fail(stream_id, UNAVAILABLE, "connection closed")
            return
        stream.sent_at = time.perf_counter()
        self._write(frame(HEADERS, END_HEADERS, stream_id, header_block))
        self._send_data(stream_id, stream)

    def _write(self, data: bytes) -> None:
        """Queue frames; everything queued in one loop turn goes out in one write (one syscall
        for all the calls a burst of responses triggers)."""
        if not self._corked:
            asyncio.get_running_loop().call_soon(self._flush)
        self._corked.append(data)

    def _flush(self) -> None:
        corked, self._corked = self._corked, []
        if self.transport is not None and corked:
            self.transport.write(b"".join(corked))

    def _send_data(self, stream_id: int, stream: _Stream) -> None:
        """Send as much of the message as the windows allow (a gRPC message is never empty)."""
        assert self.transport is not None
        out = []
        while stream.pending:
            size = min(len(stream.pending), self._max_frame, stream.window, self._send_window)
            if size <= 0:
                self._blocked.append(stream_id)
                break
            chunk, stream.pending = stream.pending[:size], stream.pending[size:]
            stream.window -= size
            self._send_window -= size
            out.append(frame(DATA, 0 if stream.pending else END_STREAM, stream_id, bytes(chunk)))
        if out:
            self._write(b"".join(out))

    def _unblock(self) -> None:
        blocked, self._blocked = self._blocked, []
        for stream_id in blocked:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.pending:
                self._send_data(stream_id, stream)

    def _fail(self, stream_id: int, code: int, message: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self.active -= 1
            self.on_response(self, stream.tag, code, message.encode(), stream.sent_at)

    # --- frames in -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= FRAME_HEADER_BYTES:
            high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(buffer, offset)
            length = (high << 16) | low
            end = offset + FRAME_HEADER_BYTES + length
            if end > len(buffer):
                break
            payload = bytes(buffer[offset + FRAME_HEADER_BYTES : end])
            offset = end
            try:
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
            except (hpack.HPACKError, ValueError, struct.error) as exc:
                self.close()
                self.connection_lost(exc)
                return
        del buffer[:offset]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._header_stream, self._header_flags = stream_id, flags
            self._header_block = bytearray(payload)
            if flags & END_HEADERS:
                self._headers_done()
        elif kind == CONTINUATION:
            self._header_block += payload
            if flags & END_HEADERS:
                self._headers_done()
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window += increment
            elif stream_id in self._streams:
                self._streams[stream_id].window += increment
            self._unblock()
        elif kind == PING:
            if not flags & ACK and self.transport is not None:
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            self._fail(stream_id, UNAVAILABLE, f"stream reset by the server (HTTP/2 error {code})")
        elif kind == GOAWAY:
            self.draining = True
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for sid in [s for s in self._streams if s > last]:
                self._fail(sid, UNAVAILABLE, "the server is going away (GOAWAY)")

    def _settings(self, payload: bytes) -> None:
        for index in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HL", payload, index)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._stream_window
                self._stream_window = value
                for stream in self._streams.values():
                    stream.window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
        if self.transport is not None:
            self.transport.write(frame(SETTINGS, ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)
        self._unblock()

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        self._received += len(payload)
        if self._received > MAX_WINDOW // 2 and self.transport is not None:
            self.transport.write(window_update(0, self._received))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.keep_body:
            stream.body += payload
        if flags & END_STREAM:  # no trailers: a broken response
            self._fail(stream_id, INTERNAL, "response ended without grpc-status trailers")

    def _headers_done(self) -> None:
        stream_id, flags = self._header_stream, self._header_flags
        fields = self._decoder.decode(bytes(self._header_block))
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if "grpc-status" in fields:
            stream.status = int(fields["grpc-status"])
            stream.message = unquote(fields.get("grpc-message", ""))
        elif fields.get(":status", "200") != "200":
            stream.status, stream.message = UNAVAILABLE, f"HTTP status {fields[':status']}"
        if flags & END_STREAM:
            self._streams.pop(stream_id)
            self.active -= 1
            if stream.status < 0:
                stream.status, stream.message = INTERNAL, "response without grpc-status"
            body = bytes(stream.body[5:]) if stream.status == OK else stream.message.encode()
            self.on_response(self, stream.tag, stream.status, body, stream.sent_at)


async def connect(host: str, port: int, on_response: ResponseCallback) -> GrpcConnection:
    """Open a connection and wait for the server's SETTINGS."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: GrpcConnection(on_response), host, port)
    await asyncio.wait_for(protocol.ready, 30)
    return protocol


class GrpcExchange:
    """Awaitable one-off unary calls (metadata, config, statistics) on their own connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connection: GrpcConnection | None = None

    @staticmethod
    def _answered(_: GrpcConnection, tag: object, status: int, body: bytes, __: float) -> None:
        assert isinstance(tag, asyncio.Future)
        if not tag.done():
            tag.set_result((status, body))

    async def call(self, method: str, request: bytes) -> tuple[int, bytes]:
        """(grpc status, response message bytes or the error message)."""
        if self._connection is None or not self._connection.usable:
            self._connection = await connect(self.host, self.port, self._answered)
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._connection.call(
            call_headers(f"/inference.GRPCInferenceService/{method}", f"{self.host}:{self.port}"),
            grpc_message(request),
            waiter,
            keep_body=True,
        )
        return await waiter

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
