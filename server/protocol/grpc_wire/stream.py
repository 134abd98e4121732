"""One HTTP/2 stream's state: a gRPC call's request bytes, flow-control windows, queued output."""

from __future__ import annotations

import asyncio
from typing import Any

from server.protocol.grpc_wire.headers import RequestHead
from server.protocol.grpc_wire.rpc import Route


class Stream:
    """One call. Windows are kept relative to the connection's settings, so a SETTINGS change
    costs nothing per stream: what we may send is the peer's initial window + `send_credit`."""

    __slots__ = (
        "body",
        "charged",
        "deadline",
        "deadline_hit",
        "done",
        "head",
        "headers_sent",
        "id",
        "messages",
        "pending",
        "pending_trailers",
        "queued_bytes",
        "recv_closed",
        "recv_unacked",
        "recv_window",
        "route",
        "send_credit",
        "task",
        "waiting_since",
        "writable",
    )

    def __init__(self, stream_id: int, head: RequestHead, recv_window: int, charged: int) -> None:
        self.id, self.head = stream_id, head
        self.route: Route | None = None
        self.body = bytearray()  # request bytes not yet cut into messages
        self.charged = charged  # bytes this stream holds against the server's request budget
        self.queued_bytes = 0  # complete messages a streaming handler has not taken yet
        self.recv_window = recv_window  # what the client may still send before our next grant
        self.recv_unacked = 0  # received bytes not yet granted back
        self.send_credit = 0  # the peer's WINDOW_UPDATE increments minus what we sent
        self.recv_closed = self.deadline_hit = self.done = self.headers_sent = False
        self.pending: list[bytes] = []  # DATA that flow control or a slow reader holds back
        self.pending_trailers: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.messages: asyncio.Queue[Any] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.waiting_since = 0.0  # loop time since which request bytes are awaited (0: not)
        self.writable: asyncio.Future[None] | None = None  # a streaming handler waits for output
