"""One client connection: HTTP/2 frames in, gRPC calls dispatched, responses framed out.

Everything a read holds is parsed in one pass, so the calls of many streams reach the batcher in
the same loop turn; writes are gathered and flushed once per turn.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import hpack

from server.protocol.grpc_wire import frames as f
from server.protocol.grpc_wire.headers import HeaderDecoder, RequestHead
from server.protocol.grpc_wire.rpc import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    UNKNOWN,
    AbortError,
    Route,
    RpcContext,
    decode_message,
    split_messages,
)

logger = logging.getLogger(__name__)

STREAM_WINDOW = 16 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME = 1024 * 1024
_END = object()  # end of a client stream


class Stream:
    """One call's state; `pending` holds DATA not yet allowed out by flow control."""

    __slots__ = (
        "body",
        "deadline",
        "deadline_hit",
        "done",
        "head",
        "headers_sent",
        "id",
        "messages",
        "pending",
        "pending_trailers",
        "recv_closed",
        "recv_unacked",
        "route",
        "send_window",
        "task",
    )

    def __init__(self, stream_id: int, head: RequestHead, send_window: int) -> None:
        self.id, self.head, self.send_window = stream_id, head, send_window
        self.route: Route | None = None
        self.body = bytearray()
        self.recv_closed = self.deadline_hit = self.done = self.headers_sent = False
        self.pending: list[bytes] = []
        self.pending_trailers: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.messages: asyncio.Queue[Any] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.recv_unacked = 0


class ConnectionOwner(Protocol):
    """What a connection needs from the listener that accepted it (`GrpcWireServer`)."""

    routes: dict[str, Route]
    max_message_bytes: int
    connections: set[GrpcConnection]

    def connection_idle(self) -> None: ...


class ProtocolViolation(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class GrpcConnection(asyncio.Protocol):
    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.needed = len(f.PREFACE)  # bytes the next parse step needs
        self.preface_seen = False
        self.decoder = HeaderDecoder()
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.header_fragments: tuple[int, int, bytearray] | None = None
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.blocked: dict[int, Stream] = {}
        self.recv_unacked = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closing = False

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.connections.add(self)
        self.write(
            f.settings_frame(
                {
                    f.SETTINGS_ENABLE_PUSH: 0,
                    f.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    f.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME,
                }
            )
        )
        self.write(f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self.discard(stream)
            if stream.task is not None:
                stream.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < self.needed:  # a large frame still arriving: just collect
                return
            data = bytes(self.buffer)
        try:
            consumed = self.parse(data)
        except ProtocolViolation as exc:
            self.abort_connection(exc.code, str(exc))
            return
        except hpack.HPACKError as exc:
            self.abort_connection(f.COMPRESSION_ERROR, f"bad header block: {exc}")
            return
        except (IndexError, ValueError, struct.error) as exc:  # frames too short for their flags
            self.abort_connection(f.PROTOCOL_ERROR, f"malformed frame: {exc}")
            return
        self.buffer = bytearray(data[consumed:])
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.write(f.window_update(0, self.recv_unacked))
            self.recv_unacked = 0

    # ---- frames in

    def parse(self, data: bytes) -> int:
        offset = 0
        if not self.preface_seen:
            if len(data) < len(f.PREFACE):
                if not f.PREFACE.startswith(data):
                    raise ProtocolViolation(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return 0
            if not data.startswith(f.PREFACE):
                raise ProtocolViolation(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self.preface_seen = True
            offset = len(f.PREFACE)
        end = len(data)
        unpack = f.FRAME_HEADER.unpack_from
        while end - offset >= f.FRAME_HEADER_BYTES:
            high, low, frame_type, flags, stream_id = unpack(data, offset)
            length = (high << 16) | low
            if length > MAX_FRAME:
                raise ProtocolViolation(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            start = offset + f.FRAME_HEADER_BYTES
            if end - start < length:
                self.needed = f.FRAME_HEADER_BYTES + length
                return offset
            offset = start + length
            stream_id &= 0x7FFFFFFF
            if self.header_fragments is not None and frame_type != f.CONTINUATION:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "expected CONTINUATION")
            if frame_type == f.DATA:
                self.on_data(stream_id, flags, data, start, length)
            elif frame_type == f.HEADERS:
                self.on_headers(stream_id, flags, data[start:offset])
            elif frame_type == f.CONTINUATION:
                self.on_continuation(stream_id, flags, data[start:offset])
            elif frame_type == f.SETTINGS:
                self.on_settings(flags, data[start:offset])
            elif frame_type == f.WINDOW_UPDATE:
                self.on_window_update(stream_id, data[start:offset])
            elif frame_type == f.PING:
                if not flags & f.ACK:
                    self.write(f.frame(f.PING, f.ACK, 0, data[start:offset]))
            elif frame_type == f.RST_STREAM:
                self.on_reset(stream_id)
            elif frame_type == f.PUSH_PROMISE:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "clients cannot push")
            # PRIORITY, GOAWAY and unknown types need nothing from a server
        self.needed = f.FRAME_HEADER_BYTES
        return offset

    def on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if flags & f.PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        if flags & f.PRIORITY_FLAG:
            payload = payload[5:]
        if flags & f.END_HEADERS:
            self.on_header_block(stream_id, flags, payload)
        else:
            self.header_fragments = (stream_id, flags, bytearray(payload))

    def on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.header_fragments is None or self.header_fragments[0] != stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.header_fragments[2].extend(payload)
        if flags & f.END_HEADERS:
            first_id, first_flags, block = self.header_fragments
            self.header_fragments = None
            self.on_header_block(first_id, first_flags, bytes(block))

    def on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        head = self.decoder.decode(block)  # always decoded: it keeps the HPACK table in sync
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client end its side of the stream
            if flags & f.END_STREAM:
                self.end_of_request(stream)
            return
        if stream_id <= self.last_stream_id or not stream_id % 2:
            return  # a stream we already closed
        self.last_stream_id = stream_id
        if self.closing:
            self.write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        stream = Stream(stream_id, head, self.peer_initial_window)
        self.streams[stream_id] = stream
        if flags & f.END_STREAM:
            stream.recv_closed = True
        if head.method != "POST" or not head.content_type.startswith("application/grpc"):
            status = 405 if head.method != "POST" else 415
            self.write(
                f.frame(
                    f.HEADERS, f.END_HEADERS | f.END_STREAM, stream_id, f.http_status_block(status)
                )
            )
            self.finish(stream)
            return
        route = self.server.routes.get(head.path)
        if route is None:
            self.send_status(stream, UNIMPLEMENTED, f"Method not found: {head.path}")
            return
        stream.route = route
        if head.timeout:
            seconds = f.parse_grpc_timeout(head.timeout)
            if seconds is None:
                self.send_status(stream, INTERNAL, f"malformed grpc-timeout '{head.timeout}'")
                return
            stream.deadline = self.loop.call_later(seconds, self.deadline_expired, stream)
        if route.client_streaming:
            stream.messages = asyncio.Queue()
            self.start(stream, None)
        if stream.recv_closed:
            self.end_of_request(stream)

    def on_data(self, stream_id: int, flags: int, data: bytes, start: int, length: int) -> None:
        self.recv_unacked += length  # flow control counts padding and closed streams too
        end = start + length
        if flags & f.PADDED and length:
            start, end = start + 1, end - data[start]
        stream = self.streams.get(stream_id)
        if stream is None or stream.recv_closed or stream.route is None:
            return
        stream.recv_unacked += length
        stream.body += data[start:end]
        if stream.messages is not None:
            self.deliver_stream_messages(stream)
        elif len(stream.body) > self.server.max_message_bytes + 5:  # refuse before it all arrives
            self.send_status(
                stream,
                RESOURCE_EXHAUSTED,
                f"received message larger than max ({self.server.max_message_bytes})",
            )
            return
        if flags & f.END_STREAM:
            self.end_of_request(stream)
        elif stream.recv_unacked >= STREAM_WINDOW // 2 and not stream.done:
            self.write(f.window_update(stream_id, stream.recv_unacked))
            stream.recv_unacked = 0

    def deliver_stream_messages(self, stream: Stream) -> None:
        assert stream.messages is not None
        try:
            for compressed, payload in split_messages(stream.body, self.server.max_message_bytes):
                stream.messages.put_nowait(
                    decode_message(compressed, payload, stream.head.encoding)
                )
        except AbortError as exc:
            self.send_status(stream, exc.code, exc.details)

    def end_of_request(self, stream: Stream) -> None:
        stream.recv_closed = True
        if stream.done or stream.route is None:
            return
        if stream.messages is not None:
            self.deliver_stream_messages(stream)
            if not stream.done:
                if stream.body:
                    self.send_status(stream, INTERNAL, "the stream ended inside a message")
                else:
                    stream.messages.put_nowait(_END)
            return
        try:
            messages = split_messages(stream.body, self.server.max_message_bytes)
            if len(messages) != 1 or stream.body:
                raise AbortError(
                    UNIMPLEMENTED if len(messages) > 1 else INTERNAL,
                    f"a unary call needs exactly one request message, got "
                    f"{len(messages)}" + (" and a partial one" if stream.body else ""),
                )
            compressed, payload = messages[0]
            self.start(stream, decode_message(compressed, payload, stream.head.encoding))
        except AbortError as exc:
            self.send_status(stream, exc.code, exc.details)

    def on_settings(self, flags: int, payload: bytes) -> None:
        if flags & f.ACK:
            return
        if len(payload) % 6:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ProtocolViolation(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
        self.write(f.frame(f.SETTINGS, f.ACK, 0))
        self.flush_blocked()

    def on_window_update(self, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
            self.flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            self.send_pending(stream)

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        self.discard(stream)
        if stream.task is not None:
            stream.task.cancel()

    def deadline_expired(self, stream: Stream) -> None:
        stream.deadline = None
        if stream.done:
            return
        stream.deadline_hit = True
        if stream.task is not None:
            stream.task.cancel()
        self.send_status(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")

    # ---- calls

    def start(self, stream: Stream, request_bytes: bytes | None) -> None:
        stream.task = self.loop.create_task(self.run(stream, request_bytes))

    async def run(self, stream: Stream, request_bytes: bytes | None) -> None:
        route = stream.route
        assert route is not None
        deadline = None
        if stream.deadline is not None:
            deadline = time.monotonic() + (stream.deadline.when() - self.loop.time())
        context = RpcContext(stream.head.metadata, deadline, self.peer)
        try:
            if request_bytes is None:
                request: Any = self.request_iterator(stream, route)
            else:
                try:
                    request = route.request_type.FromString(request_bytes)
                except Exception as exc:  # protobuf's DecodeError and friends
                    raise AbortError(INTERNAL, f"cannot parse the request message: {exc}") from None
            result = route.handler(request, context)
            if route.server_streaming:
                async for response in result:
                    self.send_message(stream, response.SerializeToString())
            else:
                self.send_message(stream, (await result).SerializeToString())
            if context.code is not None and context.code != OK:
                self.send_status(stream, context.code, context.details)
            else:
                self.send_status(stream, OK, "")
        except AbortError as exc:
            self.send_status(stream, exc.code, exc.details)
        except asyncio.CancelledError:
            if not stream.done and not stream.deadline_hit:
                self.send_status(stream, CANCELLED, "Cancelled")
        except Exception as exc:
            if context.code is not None:  # e.g. a generated base method: set_code, then raise
                self.send_status(stream, context.code, context.details or str(exc))
            else:
                logger.exception("gRPC %s failed", stream.head.path)
                self.send_status(stream, UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")

    async def request_iterator(self, stream: Stream, route: Route) -> AsyncIterator[Any]:
        assert stream.messages is not None
        while (payload := await stream.messages.get()) is not _END:
            try:
                yield route.request_type.FromString(payload)
            except Exception as exc:
                raise AbortError(INTERNAL, f"cannot parse the request message: {exc}") from None

    # ---- frames out

    def send_message(self, stream: Stream, payload: bytes) -> None:
        if stream.done:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self.write(f.frame(f.HEADERS, f.END_HEADERS, stream.id, f.RESPONSE_HEADERS))
        message = len(payload).to_bytes(5, "big") + payload  # flag byte 0: not compressed
        size = len(message)
        if (
            not stream.pending
            and size <= self.send_window
            and size <= stream.send_window
            and size <= self.peer_max_frame
        ):
            self.send_window -= size
            stream.send_window -= size
            self.write(f.frame(f.DATA, 0, stream.id, message))
            return
        stream.pending.append(message)
        self.send_pending(stream)

    def send_status(self, stream: Stream, code: int, message: str) -> None:
        """End the call with its status (trailers-only when nothing was sent)."""
        if stream.done:
            return
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        if code == OK and stream.headers_sent:
            block = f.TRAILERS_OK
        else:
            block = f.status_block(code, message[:4096], with_headers=not stream.headers_sent)
        trailers = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream.id, block)
        stream.done = True
        if stream.pending:
            stream.pending_trailers = trailers
            return
        self.write(trailers)
        self.finish(stream)

    def send_pending(self, stream: Stream) -> None:
        """Send what flow control now allows of `stream`'s queued DATA, then its trailers."""
        while stream.pending:
            allowed = min(self.send_window, stream.send_window, self.peer_max_frame)
            if allowed <= 0:
                if self.send_window <= 0:
                    self.blocked[stream.id] = stream
                return
            chunk = stream.pending[0]
            piece = chunk[:allowed]
            if len(piece) == len(chunk):
                stream.pending.pop(0)
            else:
                stream.pending[0] = chunk[allowed:]
            self.send_window -= len(piece)
            stream.send_window -= len(piece)
            self.write(f.frame(f.DATA, 0, stream.id, piece))
        self.blocked.pop(stream.id, None)
        if stream.done and stream.pending_trailers is not None:
            self.write(stream.pending_trailers)
            self.finish(stream)

    def flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            self.send_pending(stream)
        for stream in list(self.streams.values()):
            if stream.pending and stream.id not in self.blocked:
                self.send_pending(stream)

    def finish(self, stream: Stream) -> None:
        """The call is over on our side; a client still sending is told to stop."""
        stream.done = True
        if not stream.recv_closed:
            self.write(f.rst_stream(stream.id, f.NO_ERROR))
        self.discard(stream)

    def discard(self, stream: Stream) -> None:
        stream.done = True
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if self.closing and not self.streams:
            self.server.connection_idle()

    def write(self, data: bytes) -> None:
        if data:
            self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # ---- connection end

    def go_away(self) -> None:
        """Graceful shutdown: no new streams; the ones already open complete."""
        if not self.closing:
            self.closing = True
            self.write(f.goaway(self.last_stream_id, f.NO_ERROR))

    def abort_connection(self, code: int, reason: str) -> None:
        logger.info("closing gRPC connection from %s: %s", self.peer, reason)
        self.write(f.goaway(self.last_stream_id, code, reason.encode()[:256]))
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
            self.send_status(stream, UNAVAILABLE, "the server is shutting down")
        self.flush()
        if self.transport is not None:
            self.transport.close()
