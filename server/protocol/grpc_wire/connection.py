"""One client connection: HTTP/2 frames in, gRPC calls dispatched, responses framed out.

Everything a read holds is parsed in one pass, so the calls of many streams reach the batcher in
the same loop turn; writes are gathered and flushed once per turn.

What a client can make a connection hold is bounded (limits.py): request bytes by the server-wide
budget (charged as they arrive; the receive window is reopened only for charged bytes, and on a
streaming call only as its handler takes messages), streams per connection, header blocks,
control frames, resets and pings (guard.py), idle and slow peers (`tick`), and output by
back-pressure: when the client stops reading, we stop reading it and stop pulling responses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any, Protocol, cast

import hpack

from server.byte_budget import LeasePool
from server.connection_moves import GRPC, ConnectionMover
from server.protocol.grpc_wire import frames as f
from server.protocol.grpc_wire.guard import CalmDown, ConnectionGuard
from server.protocol.grpc_wire.headers import HeaderDecoder
from server.protocol.grpc_wire.limits import STREAM_COST_BYTES, GrpcLimits, RequestBudget
from server.protocol.grpc_wire.messages import PREFIX_BYTES, Inflation, split_messages, too_large
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
)
from server.protocol.grpc_wire.stream import Stream

logger = logging.getLogger(__name__)

STREAM_WINDOW = 16 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME = f.DEFAULT_MAX_FRAME  # what a client may send us: bounds a half-received frame
MAX_HEADER_FRAMES = 64
LARGE_MESSAGE_BYTES = 1 << 20
# Frames parsed per loop turn and connection: a flood in one large read is handled in slices,
# with the other connections served in between (batches of calls still form within a slice).
MAX_FRAMES_PER_TURN = 1024  # HEADERS plus CONTINUATION frames in one header block
WRITE_HIGH_WATER, WRITE_LOW_WATER = 256 * 1024, 64 * 1024
KEEPALIVE_OPAQUE = b"ferry-ka"
CLOSED_WINDOWS_KEPT = 256
LINGER_S = 1.0  # after a GOAWAY for an error, input is read and dropped this long, then close
_END = object()  # end of a client stream
Payload = bytes | bytearray | memoryview | None  # a request message (None: a streaming call)


class ConnectionOwner(Protocol):
    """What a connection needs from the listener that accepted it (`GrpcWireServer`)."""

    routes: dict[str, Route]
    limits: GrpcLimits
    budget: RequestBudget
    connections: set[GrpcConnection]
    mover: ConnectionMover | None
    connection_pool: LeasePool | None  # --workers N: the server's --grpc-max-connections

    @property
    def inflate_executor(self) -> Executor: ...

    def connection_idle(self) -> None: ...


class ProtocolViolation(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class GrpcConnection(asyncio.Protocol):
    def __init__(self, server: ConnectionOwner, movable: bool = True) -> None:
        self.server = server
        # counted in the mover (server/workers/handoff.py) while open; False once moved here
        self.mover = server.mover
        self.movable = movable
        self.limits = limits = server.limits
        self.budget = server.budget
        self.max_message = limits.max_receivable_message_bytes
        self.max_block = 2 * limits.max_header_list_bytes
        self.loop = asyncio.get_running_loop()
        self.now = self.created_at = self.last_read_at = self.idle_since = self.loop.time()
        self.guard = ConnectionGuard(limits, self.now)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.needed = len(f.PREFACE)  # bytes the next parse step needs
        self.preface_seen = self.settings_seen = False
        self.decoder = HeaderDecoder(limits.max_header_list_bytes)
        self.streams: dict[int, Stream] = {}
        self.receiving: dict[int, Stream] = {}  # streams awaiting request bytes, timed by `tick`
        self.last_stream_id = 0
        self.header_fragments: tuple[int, int, bytearray] | None = None
        self.header_frames = 0
        self.send_window = f.DEFAULT_WINDOW
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.blocked: dict[int, Stream] = {}  # streams with DATA held back
        self.write_waiters: dict[int, Stream] = {}
        self.flush_blocked_needed = False
        self.recv_window = CONNECTION_WINDOW
        self.recv_unacked = 0
        self.closed_windows: dict[int, int] = {}  # recently closed streams: DATA still allowed
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closing = self.write_paused = self.lingering = self.backlog = False
        self.ready: list[tuple[Stream, int, Payload]] = []  # calls to start this turn
        self.keepalive_sent_at: float | None = None
        self.sent_data = False  # HEADERS or DATA sent since the last ping (gRPC's ping policy)
        self.progress_frames = 0  # streams opened and DATA frames sent: what window updates follow
        self.age_deadline: float | None = None
        self.counted = False  # within --grpc-max-connections (leased from the pool, if any)
        self.grace_deadline: float | None = None
        if limits.max_connection_age_ms:  # gRPC's ±10 % jitter spreads reconnections
            age_s = limits.max_connection_age_ms / 1000 * random.uniform(0.9, 1.1)
            self.age_deadline = self.now + age_s

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.mover is not None:
            if self.movable and self._moved(self.mover):
                return
            self.mover.opened()
        pool = self.server.connection_pool
        if (
            len(self.server.connections) >= self.limits.max_connections
            if pool is None
            else not pool.lease(1)  # the server's count, across its workers
        ):
            self.abort_connection(
                f.ENHANCE_YOUR_CALM,
                f"too many connections (limit {self.limits.max_connections}, "
                "--grpc-max-connections)",
            )
            return
        self.counted = True
        self.server.connections.add(self)
        self.write(
            f.settings_frame(
                {
                    f.SETTINGS_ENABLE_PUSH: 0,
                    f.SETTINGS_MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                    f.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                    f.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME,
                    f.SETTINGS_MAX_HEADER_LIST_SIZE: self.limits.max_header_list_bytes,
                }
            )
        )
        self.write(f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))

    def _moved(self, mover: ConnectionMover) -> bool:
        """Whether this connection, just accepted, went to its models' owner (nothing read or
        written yet)."""
        slot = mover.accept_target()
        transport = self.transport
        sock = None if transport is None else transport.get_extra_info("socket")
        if slot is not None and sock is not None and mover.send(sock.fileno(), slot, GRPC):
            self.mover = None  # never counted here
            cast(asyncio.Transport, transport).abort()  # (this worker's descriptor only)
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.mover is not None:
            self.mover.closed()
            self.mover = None
        self.server.connections.discard(self)
        if self.counted:
            self.counted = False
            if self.server.connection_pool is not None:
                self.server.connection_pool.give_back(1)
        for stream in list(self.streams.values()):
            self.discard(stream)
            if stream.task is not None:
                stream.task.cancel()

    def pause_writing(self) -> None:
        """The client is not reading: read nothing more from it until it catches up."""
        self.write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.update_reading()
        self.flush_blocked()
        for stream in list(self.write_waiters.values()):
            if not stream.pending:
                self.wake(stream)

    def update_reading(self) -> None:
        """Read from the client unless it does not read us, or frames already read wait."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.lingering:
            return
        if self.write_paused or self.backlog:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self.now = self.last_read_at = self.loop.time()
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < self.needed:  # a frame still arriving: just collect
                return
            data = bytes(self.buffer)
        self.process(data)

    def process_backlog(self) -> None:
        """The next turn's share of frames read earlier (see MAX_FRAMES_PER_TURN)."""
        if self.lingering or self.transport is None or self.transport.is_closing():
            return
        self.now = self.loop.time()
        self.process(bytes(self.buffer))
        self.update_reading()

    def process(self, data: bytes) -> None:
        """Parse frames, then start the calls they completed, all in this loop turn."""
        self.backlog = False
        try:
            consumed = self.parse(data)
        except ProtocolViolation as exc:
            self.abort_connection(exc.code, str(exc))
            return
        except CalmDown as exc:
            self.abort_connection(f.ENHANCE_YOUR_CALM, str(exc))
            return
        except hpack.HPACKError as exc:
            self.abort_connection(f.COMPRESSION_ERROR, f"bad header block: {exc}")
            return
        except (IndexError, ValueError, struct.error) as exc:  # frames too short for their flags
            self.abort_connection(f.PROTOCOL_ERROR, f"malformed frame: {exc}")
            return
        self.buffer = bytearray(data[consumed:])
        if self.ready:  # started after the parse: a call reset in the same read never runs
            ready, self.ready = self.ready, []
            for stream, compressed, payload in ready:
                if not stream.done:
                    stream.task = self.loop.create_task(self.run(stream, compressed, payload))
        if self.flush_blocked_needed:
            self.flush_blocked_needed = False
            self.flush_blocked()
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self.announce_connection_window()
        if self.backlog:  # other connections get their turn before the rest of this read
            self.update_reading()
            self.loop.call_soon(self.process_backlog)

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
        frames_left = MAX_FRAMES_PER_TURN
        while end - offset >= f.FRAME_HEADER_BYTES:
            frames_left -= 1
            if not frames_left:
                self.backlog = True
                return offset
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
            if not self.settings_seen and frame_type != f.SETTINGS:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "the preface must end with SETTINGS")
            if frame_type == f.DATA:
                self.on_data(stream_id, flags, data, start, length)
            elif frame_type == f.HEADERS:
                self.on_headers(stream_id, flags, data[start:offset])
            elif frame_type == f.CONTINUATION:
                self.on_continuation(stream_id, flags, data[start:offset])
            elif frame_type == f.SETTINGS:
                self.on_settings(stream_id, flags, data[start:offset])
            elif frame_type == f.WINDOW_UPDATE:
                self.on_window_update(stream_id, data[start:offset])
            elif frame_type == f.PING:
                self.on_ping(stream_id, flags, data[start:offset])
            elif frame_type == f.RST_STREAM:
                self.on_reset(stream_id, data[start:offset])
            elif frame_type == f.PUSH_PROMISE:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "clients cannot push")
            else:  # PRIORITY, GOAWAY and unknown types need nothing from a server
                self.guard.control_frame(self.now)
        self.needed = f.FRAME_HEADER_BYTES
        return offset

    def on_headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            pad = payload[0]
            if pad >= len(payload):
                raise ProtocolViolation(f.PROTOCOL_ERROR, "padding longer than the frame")
            payload = payload[1 : len(payload) - pad]
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if len(payload) > self.max_block:
            raise CalmDown(self.block_too_large())
        if flags & f.END_HEADERS:
            self.on_header_block(stream_id, flags, payload)
        else:
            if not payload:
                self.guard.control_frame(self.now)
            self.header_fragments = (stream_id, flags, bytearray(payload))
            self.header_frames = 1

    def on_continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self.header_fragments is None or self.header_fragments[0] != stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self.header_fragments[2]
        self.header_frames += 1
        if self.header_frames > MAX_HEADER_FRAMES:
            raise CalmDown(f"a header block in more than {MAX_HEADER_FRAMES} frames")
        if len(block) + len(payload) > self.max_block:  # checked before hpack ever sees it
            raise CalmDown(self.block_too_large())
        if not payload and not flags & f.END_HEADERS:
            self.guard.control_frame(self.now)
        block.extend(payload)
        if flags & f.END_HEADERS:
            first_id, first_flags, _ = self.header_fragments
            self.header_fragments = None
            self.on_header_block(first_id, first_flags, bytes(block))

    def block_too_large(self) -> str:
        return f"a header block over {self.max_block} bytes (twice --grpc-max-header-list-bytes)"

    def on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        head = self.decoder.decode(block)  # always decoded: it keeps the HPACK table in sync
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client end its side of the stream
            if flags & f.END_STREAM:
                self.end_of_request(stream)
            else:
                self.guard.control_frame(self.now)
            return
        if stream_id <= self.last_stream_id or not stream_id % 2:
            self.guard.control_frame(self.now)  # a stream we already closed
            return
        self.last_stream_id = stream_id
        self.progress_frames += 1  # a new stream: window updates for it are expected
        if self.closing or len(self.streams) >= self.limits.max_concurrent_streams:
            self.guard.control_frame(self.now)
            self.write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        charged = STREAM_COST_BYTES if self.budget.try_charge(STREAM_COST_BYTES) else 0
        stream = Stream(stream_id, head, STREAM_WINDOW, charged)
        self.streams[stream_id] = stream
        self.idle_since = 0.0
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
        if not charged:
            self.send_status(stream, RESOURCE_EXHAUSTED, self.budget.exhausted_message())
            return
        if head.list_size > self.limits.max_header_list_bytes:
            self.send_status(
                stream,
                RESOURCE_EXHAUSTED,
                f"header list of {head.list_size} bytes is over the limit of "
                f"{self.limits.max_header_list_bytes} (--grpc-max-header-list-bytes)",
            )
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
            self.start(stream, 0, None)
        if stream.recv_closed:
            self.end_of_request(stream)
        elif not route.client_streaming:
            stream.waiting_since = self.now
            self.receiving[stream_id] = stream

    def on_data(self, stream_id: int, flags: int, data: bytes, start: int, length: int) -> None:
        if not stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_window -= length  # flow control counts padding and closed streams too
        if self.recv_window < 0:
            raise ProtocolViolation(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        end = start + length
        if flags & f.PADDED:
            if not length or data[start] >= length:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "padding longer than the frame")
            start, end = start + 1, end - data[start]
        stream = self.streams.get(stream_id)
        if stream is None or stream.recv_closed or stream.done:
            self.on_dropped_data(
                stream_id, stream, length, end == start and not flags & f.END_STREAM
            )
            return
        self.recv_unacked += length
        stream.recv_window -= length
        if stream.recv_window < 0:
            self.reset_stream(stream, f.FLOW_CONTROL_ERROR)
            return
        stream.recv_unacked += length
        if end > start:
            if not self.budget.try_charge(end - start):
                self.refuse(stream, RESOURCE_EXHAUSTED, self.budget.exhausted_message())
                return
            stream.charged += end - start
            stream.body += data[start:end]
        elif not flags & f.END_STREAM:
            self.guard.control_frame(self.now)
        if stream.messages is not None:
            self.deliver_stream_messages(stream)
        elif not flags & f.END_STREAM and len(stream.body) >= PREFIX_BYTES:
            self.check_unary_body(stream)  # refuse at once what can never be accepted
        if stream.done:
            return
        if flags & f.END_STREAM:
            self.end_of_request(stream)
        elif stream.recv_unacked >= STREAM_WINDOW // 2 and stream.queued_bytes < STREAM_WINDOW // 2:
            self.grant(stream)

    def on_dropped_data(
        self, stream_id: int, stream: Stream | None, length: int, empty: bool
    ) -> None:
        """DATA for a stream that is over on our side. It still counts against the connection
        window, which is reopened for it only within what the stream's own window allowed when
        we closed it: a client that keeps sending anyway runs the connection window dry and then
        gets FLOW_CONTROL_ERROR, instead of having us read and drop its bytes for ever."""
        if stream_id > self.last_stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "DATA on a stream never opened")
        if empty:
            self.guard.control_frame(self.now)
        if stream is not None:  # answered, the answer still going out
            allowance = stream.recv_window
            stream.recv_window -= length
        else:
            allowance = self.closed_windows.pop(stream_id, 0)
            if allowance > length:
                self.closed_windows[stream_id] = allowance - length
        if length <= allowance:
            self.recv_unacked += length

    def check_unary_body(self, stream: Stream) -> None:
        declared = int.from_bytes(stream.body[1:PREFIX_BYTES], "big")
        if declared > self.max_message:
            self.refuse(stream, RESOURCE_EXHAUSTED, str(too_large(declared, self.max_message)))
        elif len(stream.body) > PREFIX_BYTES + declared:
            self.refuse(stream, UNIMPLEMENTED, "a unary call needs exactly one request message")

    def grant(self, stream: Stream) -> None:
        """Reopen the stream's receive window by what it has taken in."""
        self.write(f.window_update(stream.id, stream.recv_unacked))
        stream.recv_window += stream.recv_unacked
        stream.recv_unacked = 0

    def deliver_stream_messages(self, stream: Stream) -> None:
        assert stream.messages is not None
        try:
            messages = split_messages(stream.body, self.max_message)
        except AbortError as exc:
            self.refuse(stream, exc.code, exc.details)
            return
        for compressed, payload in messages:
            size = len(payload) + PREFIX_BYTES
            stream.queued_bytes += size
            stream.messages.put_nowait((compressed, payload, size))
        if stream.body:  # a message is under way: time it
            if messages or not stream.waiting_since:
                stream.waiting_since = self.now
                self.receiving[stream.id] = stream
        elif stream.waiting_since:
            stream.waiting_since = 0.0
            self.receiving.pop(stream.id, None)

    def consumed(self, stream: Stream, size: int) -> None:
        """A streaming handler took a message: its bytes leave the budget and the window."""
        stream.queued_bytes -= size
        released = min(size, stream.charged)  # nothing once the stream was discarded
        stream.charged -= released
        self.budget.release(released)
        if (
            not stream.done
            and not stream.recv_closed
            and stream.recv_unacked >= STREAM_WINDOW // 2
            and stream.queued_bytes < STREAM_WINDOW // 2
        ):
            self.grant(stream)

    def end_of_request(self, stream: Stream) -> None:
        stream.recv_closed = True
        if stream.waiting_since:
            stream.waiting_since = 0.0
            self.receiving.pop(stream.id, None)
        if stream.done or stream.route is None:
            return
        if stream.messages is not None:
            self.deliver_stream_messages(stream)
            if not stream.done:
                if stream.body:
                    self.refuse(stream, INTERNAL, "the stream ended inside a message")
                else:
                    stream.messages.put_nowait(_END)
            return
        body = stream.body
        if len(body) >= PREFIX_BYTES and len(body) == PREFIX_BYTES + int.from_bytes(
            body[1:PREFIX_BYTES], "big"
        ):
            if len(body) - PREFIX_BYTES > self.max_message:
                self.send_status(
                    stream,
                    RESOURCE_EXHAUSTED,
                    str(too_large(len(body) - PREFIX_BYTES, self.max_message)),
                )
                return
            # the one message; a large one handed over without a copy (the body stays as it is)
            if len(body) > LARGE_MESSAGE_BYTES:
                self.start(stream, body[0], memoryview(body)[PREFIX_BYTES:])
            else:
                self.start(stream, body[0], body[PREFIX_BYTES:])
            return
        try:
            messages = split_messages(body, self.max_message)
            raise AbortError(
                UNIMPLEMENTED if len(messages) > 1 else INTERNAL,
                f"a unary call needs exactly one request message, got "
                f"{len(messages)}" + (" and a partial one" if body else ""),
            )
        except AbortError as exc:
            self.send_status(stream, exc.code, exc.details)

    def on_settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ProtocolViolation(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self.guard.control_frame(self.now)
            return
        if len(payload) % 6:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        self.guard.control_frame(self.now, max(1, len(payload) // 6))
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ProtocolViolation(f.FLOW_CONTROL_ERROR, "initial window too large")
                if value > self.peer_initial_window and self.blocked:
                    # waking every blocked stream is the one cost here that grows with streams
                    self.guard.control_frame(self.now, len(self.blocked) / 32)
                    self.flush_blocked_needed = True
                self.peer_initial_window = value  # stream windows are relative to it: O(1)
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.LARGEST_MAX_FRAME:
                    raise ProtocolViolation(f.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH and value > 1:
                raise ProtocolViolation(f.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        self.settings_seen = True
        self.write(f.frame(f.SETTINGS, f.ACK, 0))

    def on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        self.guard.window_update(self.progress_frames)
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise ProtocolViolation(f.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            if self.blocked:
                self.flush_blocked_needed = True
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not increment:
            self.reset_stream(stream, f.PROTOCOL_ERROR)
            return
        stream.send_credit += increment
        if self.peer_initial_window + stream.send_credit > f.MAX_WINDOW:
            self.reset_stream(stream, f.FLOW_CONTROL_ERROR)
        elif stream.pending:
            self.send_pending(stream)

    def on_ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "PING of the wrong length")
        if flags & f.ACK:
            if payload == KEEPALIVE_OPAQUE and self.keepalive_sent_at is not None:
                self.keepalive_sent_at = None
            else:
                self.guard.control_frame(self.now)
            return
        self.guard.control_frame(self.now)
        self.settle_sent_data()
        self.guard.ping(self.now, bool(self.streams))
        self.write(f.frame(f.PING, f.ACK, 0, payload))
        if self.recv_unacked:  # gRPC core announces the window with any write it makes
            self.announce_connection_window()

    def announce_connection_window(self) -> None:
        """Give back the connection window taken in so far. As in gRPC core (chttp2's
        FlushWindowUpdates, which also goes out with any other write, a ping's ACK included),
        it resets the ping clock: a client that pings while it uploads (BDP probes) is not
        striking while its data still arrives."""
        self.write(f.window_update(0, self.recv_unacked))
        self.recv_window += self.recv_unacked
        self.recv_unacked = 0
        self.sent_data = True

    def settle_sent_data(self) -> None:
        """Tell the guard if HEADERS or DATA went out since it last asked (a flag on the hot
        path, a call only here)."""
        if self.sent_data:
            self.sent_data = False
            self.guard.sent_headers_or_data()

    def may_ping(self) -> bool:
        self.settle_sent_data()
        return self.guard.may_ping()

    def on_reset(self, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        self.guard.reset(self.now)
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "RST_STREAM on a stream never opened")
            return
        stream.recv_closed = True
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

    def start(self, stream: Stream, compressed: int, payload: Payload) -> None:
        self.ready.append((stream, compressed, payload))

    async def run(self, stream: Stream, compressed: int, payload: Payload) -> None:
        route = stream.route
        assert route is not None
        deadline = None
        if stream.deadline is not None:
            deadline = time.monotonic() + (stream.deadline.when() - self.loop.time())
        context = RpcContext(stream.head.metadata, deadline, self.peer)
        try:
            if payload is None:
                request: Any = self.request_iterator(stream, route)
            else:
                if compressed:
                    payload = memoryview(await self.inflate(stream, payload, keep_charge=True))
                request = self.parse_request(route, payload)
            result = route.handler(request, context)
            if route.server_streaming:
                async for response in result:
                    self.send_message(stream, response.SerializeToString())
                    if stream.pending or self.write_paused:
                        await self.writable(stream)  # a client that does not read stops us
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

    @staticmethod
    def parse_request(route: Route, payload: bytes | bytearray | memoryview) -> Any:
        try:
            return route.request_type.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise AbortError(INTERNAL, f"cannot parse the request message: {exc}") from None

    async def inflate(
        self, stream: Stream, payload: bytes | bytearray | memoryview, keep_charge: bool
    ) -> bytearray:
        """A compressed message inflated: one bounded step here, the rest on a worker thread.
        With `keep_charge` the inflated bytes stay charged to the stream until it ends."""
        inflation = Inflation(payload, stream.head.encoding, self.max_message, self.budget)
        try:
            if not inflation.step():
                try:
                    await self.loop.run_in_executor(self.server.inflate_executor, inflation.finish)
                except asyncio.CancelledError:
                    inflation.abandon()
                    raise
        except AbortError:
            inflation.release()
            raise
        if not keep_charge:
            output = inflation.output
            inflation.release()
            return output
        stream.charged += inflation.charged
        return inflation.settle()

    async def request_iterator(self, stream: Stream, route: Route) -> AsyncIterator[Any]:
        assert stream.messages is not None
        while (item := await stream.messages.get()) is not _END:
            compressed, payload, size = item
            self.consumed(stream, size)
            if compressed:
                payload = await self.inflate(stream, payload, keep_charge=False)
            yield self.parse_request(route, payload)

    # ---- frames out

    def send_message(self, stream: Stream, payload: bytes) -> None:
        if stream.done:
            return
        self.sent_data = True
        if not stream.headers_sent:
            stream.headers_sent = True
            self.write(f.frame(f.HEADERS, f.END_HEADERS, stream.id, f.RESPONSE_HEADERS))
        message = len(payload).to_bytes(5, "big") + payload  # flag byte 0: not compressed
        size = len(message)
        if (
            not stream.pending
            and not self.write_paused
            and size <= self.send_window
            and size <= self.peer_initial_window + stream.send_credit
            and size <= self.peer_max_frame
        ):
            self.send_window -= size
            stream.send_credit -= size
            self.progress_frames += 1
            self.write(f.frame(f.DATA, 0, stream.id, message))
            return
        stream.pending.append(message)
        self.send_pending(stream)

    def send_status(self, stream: Stream, code: int, message: str) -> None:
        """End the call with its status (trailers-only when nothing was sent)."""
        if stream.done:
            return
        self.sent_data = True
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

    def refuse(self, stream: Stream, code: int, message: str) -> None:
        """End a call from outside its handler: the status, and the handler stopped."""
        self.send_status(stream, code, message)
        if stream.task is not None:
            stream.task.cancel()

    def reset_stream(self, stream: Stream, code: int) -> None:
        self.write(f.rst_stream(stream.id, code))
        stream.recv_closed = True
        self.discard(stream)
        if stream.task is not None:
            stream.task.cancel()

    def send_pending(self, stream: Stream) -> None:
        """Send what flow control now allows of `stream`'s queued DATA, then its trailers."""
        while stream.pending:
            allowed = min(
                self.send_window, self.peer_initial_window + stream.send_credit, self.peer_max_frame
            )
            if allowed <= 0 or self.write_paused:
                self.blocked[stream.id] = stream
                return
            chunk = stream.pending[0]
            piece = chunk[:allowed]
            if len(piece) == len(chunk):
                stream.pending.pop(0)
            else:
                stream.pending[0] = chunk[allowed:]
            self.send_window -= len(piece)
            stream.send_credit -= len(piece)
            self.progress_frames += 1
            self.write(f.frame(f.DATA, 0, stream.id, piece))
        self.blocked.pop(stream.id, None)
        if stream.done and stream.pending_trailers is not None:
            self.write(stream.pending_trailers)
            self.finish(stream)
        elif stream.writable is not None and not self.write_paused:
            self.wake(stream)

    def flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            self.send_pending(stream)

    async def writable(self, stream: Stream) -> None:
        """Wait until `stream`'s output has gone out and the client reads again."""
        if stream.done:
            return
        waiter = stream.writable = self.loop.create_future()
        self.write_waiters[stream.id] = stream
        await waiter

    def wake(self, stream: Stream) -> None:
        waiter, stream.writable = stream.writable, None
        self.write_waiters.pop(stream.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        if stream.charged:
            self.budget.release(stream.charged)
            stream.charged = 0
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self.receiving.pop(stream.id, None)
        if not stream.recv_closed and stream.recv_window > 0:  # DATA may still be on its way
            self.closed_windows[stream.id] = stream.recv_window
            if len(self.closed_windows) > CLOSED_WINDOWS_KEPT:
                del self.closed_windows[next(iter(self.closed_windows))]
        if stream.writable is not None:
            self.wake(stream)
        if not self.streams:
            self.idle_since = self.now
            if self.closing:
                self.server.connection_idle()

    def write(self, data: bytes) -> None:
        if self.lingering:
            return  # after our GOAWAY and end of output, nothing more goes out
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

    # ---- timers (called by the server's sweeper)

    def tick(self, now: float) -> None:
        """Close what has waited too long: a handshake, a request's bytes, an idle or old
        connection, an unanswered keepalive ping."""
        limits = self.limits
        self.now = now
        if self.lingering:
            return
        if not self.settings_seen:
            if now - self.created_at > limits.handshake_timeout_ms / 1000:
                self.abort_connection(
                    f.PROTOCOL_ERROR,
                    f"no HTTP/2 preface and SETTINGS within {limits.handshake_timeout_ms} ms "
                    "(--grpc-handshake-timeout)",
                )
            return
        if self.receiving and limits.request_receive_timeout_ms:
            oldest = now - limits.request_receive_timeout_ms / 1000
            for stream in [s for s in self.receiving.values() if s.waiting_since < oldest]:
                self.refuse(
                    stream,
                    DEADLINE_EXCEEDED,
                    f"the request did not arrive within {limits.request_receive_timeout_ms} ms "
                    "(--grpc-request-receive-timeout)",
                )
        if (
            limits.max_connection_idle_ms
            and not self.streams
            and now - self.idle_since > limits.max_connection_idle_ms / 1000
        ):
            self.go_away()
            return
        if self.keepalive_sent_at is not None:
            if now - self.keepalive_sent_at > limits.keepalive_timeout_ms / 1000:
                self.abort_connection(f.NO_ERROR, "keepalive ping not acknowledged")
                return
        elif (
            now - self.last_read_at >= limits.keepalive_time_ms / 1000
            and (self.streams or limits.keepalive_permit_without_calls)
            and self.may_ping()
        ):
            self.keepalive_sent_at = now
            self.write(f.frame(f.PING, 0, 0, KEEPALIVE_OPAQUE))
        if self.age_deadline is not None and now >= self.age_deadline:
            self.age_deadline = None
            self.go_away()
            grace = limits.max_connection_age_grace_ms
            if grace is not None:
                self.grace_deadline = now + grace / 1000
        if self.grace_deadline is not None and now >= self.grace_deadline:
            self.close()

    # ---- connection end

    def go_away(self) -> None:
        """Graceful shutdown: no new streams; the ones already open complete."""
        if not self.closing:
            self.closing = True
            self.write(f.goaway(self.last_stream_id, f.NO_ERROR))
        if not self.streams:
            self.close()

    def abort_connection(self, code: int, reason: str) -> None:
        """GOAWAY with `code`, then close. Until the close, what the peer still sends is read
        and dropped: closing with unread input would reset the connection, and the peer would
        lose the GOAWAY that tells it why."""
        if self.lingering:
            return
        logger.info("closing gRPC connection from %s: %s", self.peer, reason)
        for stream in list(self.streams.values()):
            self.discard(stream)
            if stream.task is not None:
                stream.task.cancel()
        self.write(f.goaway(self.last_stream_id, code, reason.encode()[:256]))
        self.flush()
        self.lingering = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        if self.write_paused:
            transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def close(self) -> None:
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
            self.send_status(stream, UNAVAILABLE, "the server is shutting down")
        self.flush()
        if self.transport is not None:
            self.transport.close()
