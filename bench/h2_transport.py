"""ferry's gRPC transport rebuilt on the `h2` library's HTTP/2 state machine, to measure it against
ferry's own frame layer (server/protocol/grpc_wire/). Same servicers, same one-read dispatch:
every event of a read is handled, then the calls that read completed start in the same loop turn,
so batches form as they do on the default transport. Unary and streaming calls, flow control both
ways (h2's), trailers; none of the limits of the default transport beyond what h2 itself checks.
A benchmark variant, not a supported transport:

    PYTHONPATH=. python -m bench.grpc_ab --server ferry=. --server h2=.:bench.h2_transport

`python -m bench.h2_transport serve ...` is `ferry serve ...` with this connection class.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from server.protocol.grpc_wire import server as wire_server
from server.protocol.grpc_wire.headers import request_head
from server.protocol.grpc_wire.messages import split_messages
from server.protocol.grpc_wire.rpc import (
    INTERNAL,
    OK,
    UNIMPLEMENTED,
    UNKNOWN,
    AbortError,
    Route,
    RpcContext,
)

logger = logging.getLogger(__name__)
RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity"),
]
_END = object()


class H2Call:
    __slots__ = ("body", "head", "messages", "pending", "route", "sent_headers", "task", "trailers")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.head = request_head([(k.decode(), v.decode()) for k, v in fields])
        self.route: Route | None = None
        self.body = bytearray()
        self.messages: asyncio.Queue[Any] | None = None
        self.pending = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.sent_headers = False
        self.task: asyncio.Task[None] | None = None


class H2GrpcConnection(asyncio.Protocol):
    """One connection, driven by h2.connection.H2Connection."""

    def __init__(self, server: wire_server.GrpcWireServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # header checks off: the fastest h2 can go (ferry's own layer checks less too)
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, H2Call] = {}
        self.ready: list[tuple[int, H2Call]] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)  # type: ignore[arg-type]
        self.h2.local_settings.initial_window_size = 16 * 1024 * 1024
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(64 * 1024 * 1024 - 65_535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)  # type: ignore[arg-type]
        for call in self.calls.values():
            if call.task is not None:
                call.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            logger.info("closing connection: %s", exc)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.on_request(event.stream_id, event.headers)
            elif isinstance(event, h2.events.DataReceived):
                call = self.calls.get(event.stream_id)
                if call is not None and call.route is not None:
                    call.body += event.data
                    if call.messages is not None:
                        self.deliver(event.stream_id, call)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.on_end(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                call = self.calls.pop(event.stream_id, None)
                if call is not None and call.task is not None:
                    call.task.cancel()
            elif isinstance(event, h2.events.WindowUpdated):
                for stream_id, call in list(self.calls.items()):
                    if call.pending or call.trailers is not None:
                        self.send_pending(stream_id, call)
        ready, self.ready = self.ready, []
        for stream_id, call in ready:  # the calls of this read start together
            call.task = self.loop.create_task(self.run(stream_id, call))
        self.flush()

    def on_request(self, stream_id: int, fields: list[tuple[bytes, bytes]]) -> None:
        call = self.calls[stream_id] = H2Call(fields)
        route = self.server.routes.get(call.head.path)
        if route is None:
            self.finish(stream_id, call, UNIMPLEMENTED, f"Method not found: {call.head.path}")
            return
        call.route = route
        if route.client_streaming:
            call.messages = asyncio.Queue()
            self.ready.append((stream_id, call))

    def deliver(self, stream_id: int, call: H2Call) -> None:
        assert call.messages is not None
        for _, payload in split_messages(call.body, self.server.limits.max_message_bytes):
            call.messages.put_nowait(payload)

    def on_end(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.route is None:
            return
        if call.messages is not None:
            self.deliver(stream_id, call)
            call.messages.put_nowait(_END)
        else:
            self.ready.append((stream_id, call))

    async def run(self, stream_id: int, call: H2Call) -> None:
        route = call.route
        assert route is not None
        context = RpcContext(call.head.metadata, None, "")
        try:
            if call.messages is not None:
                request: Any = self.requests(call, route)
            else:
                messages = split_messages(call.body, self.server.limits.max_message_bytes)
                if len(messages) != 1:
                    raise AbortError(INTERNAL, "a unary call needs exactly one request message")
                request = route.request_type.FromString(messages[0][1])
            result = route.handler(request, context)
            if route.server_streaming:
                async for response in result:
                    self.send_message(stream_id, call, response.SerializeToString())
            else:
                self.send_message(stream_id, call, (await result).SerializeToString())
            self.finish(stream_id, call, context.code or OK, context.details)
        except AbortError as exc:
            self.finish(stream_id, call, exc.code, exc.details)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.finish(stream_id, call, UNKNOWN, f"{type(exc).__name__}: {exc}")

    async def requests(self, call: H2Call, route: Route) -> AsyncIterator[Any]:
        assert call.messages is not None
        while (payload := await call.messages.get()) is not _END:
            yield route.request_type.FromString(payload)

    def send_message(self, stream_id: int, call: H2Call, payload: bytes) -> None:
        if not call.sent_headers:
            call.sent_headers = True
            self.h2.send_headers(stream_id, RESPONSE_HEADERS)
        call.pending += len(payload).to_bytes(5, "big") + payload
        self.send_pending(stream_id, call)

    def finish(self, stream_id: int, call: H2Call, code: int, message: str) -> None:
        trailers = [(b"grpc-status", str(code).encode())]
        if message:
            trailers.append((b"grpc-message", message[:1024].encode("ascii", "replace")))
        if not call.sent_headers:
            call.sent_headers = True
            self.h2.send_headers(stream_id, RESPONSE_HEADERS)
        call.trailers = trailers
        self.send_pending(stream_id, call)

    def send_pending(self, stream_id: int, call: H2Call) -> None:
        try:
            while call.pending:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
                if window <= 0:
                    return
                piece = bytes(call.pending[:window])
                del call.pending[:window]
                self.h2.send_data(stream_id, piece)
            if call.trailers is not None:
                self.h2.send_headers(stream_id, call.trailers, end_stream=True)
                self.calls.pop(stream_id, None)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.calls.pop(stream_id, None)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # what GrpcWireServer.stop and its sweeper call on a connection
    @property
    def streams(self) -> dict[int, H2Call]:
        return self.calls

    def go_away(self) -> None:
        self.h2.close_connection()
        self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def tick(self, now: float) -> None:
        pass


def main() -> None:
    wire_server.GrpcConnection = H2GrpcConnection  # type: ignore[misc,assignment]
    from ferry.cli import main as ferry_main

    sys.argv[0] = "ferry"
    ferry_main()


if __name__ == "__main__":
    main()
