"""The listener: accepts connections, holds the routes, the limits and the request budget, times
out slow and idle peers, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from server.byte_budget import LeasePool
from server.connection_moves import ConnectionMover
from server.protocol.grpc_wire.connection import GrpcConnection
from server.protocol.grpc_wire.limits import GrpcLimits, RequestBudget
from server.protocol.grpc_wire.rpc import Route

INFLATE_THREADS = max(1, (os.cpu_count() or 2) // 2)  # leave the event loop a core


class GrpcWireServer:
    """gRPC over HTTP/2 served straight from the event loop (h2c, or TLS with `ssl_context`).

    The surface `server/app.py` uses from grpc.aio.Server: `start`, `stop(grace)`.
    """

    def __init__(
        self,
        routes: dict[str, Route],
        host: str,
        port: int,
        limits: GrpcLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        mover: ConnectionMover | None = None,
        budget_pool: LeasePool | None = None,
        connection_pool: LeasePool | None = None,
    ) -> None:
        self.routes = routes
        # --workers N --shared-batching: a connection may move to its models' owner when
        # accepted (server/workers/handoff.py); not over TLS (the handshake read it already)
        self.mover = mover if ssl_context is None else None
        self.reuse_port = reuse_port
        self.ssl_context = ssl_context
        self.host, self.port = host, port
        self.limits = limits or GrpcLimits()
        self.budget = RequestBudget(self.limits.max_buffered_request_bytes, budget_pool)
        # large compressed messages inflate here, off the event loop (zlib releases the GIL)
        self.inflate_executor = ThreadPoolExecutor(INFLATE_THREADS, "grpc-inflate")
        self.connections: set[GrpcConnection] = set()
        # --workers N: the server's --grpc-max-connections, one unit leased per connection
        self.connection_pool = connection_pool
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    async def start(self) -> None:
        self._listener = await self._listen()
        self._sweeper = asyncio.create_task(self._sweep())

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: GrpcConnection(self),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=4096,
            ssl=self.ssl_context,
        )

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connection another worker accepted and moved here; it does not move again."""
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: GrpcConnection(self, movable=False), sock
        )

    @property
    def bound_port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    def _tick_seconds(self) -> float:
        limits = self.limits
        timeouts_ms = [
            limits.handshake_timeout_ms,
            limits.request_receive_timeout_ms,
            limits.max_connection_idle_ms,
            limits.keepalive_time_ms,
            limits.keepalive_timeout_ms,
            limits.max_connection_age_ms or 0,
            limits.max_connection_age_grace_ms or 0,
        ]
        shortest = min((t for t in timeouts_ms if t > 0), default=1000)
        return min(max(shortest / 4000, 0.05), 1.0)

    async def _sweep(self) -> None:
        """One timer for every connection and stream, instead of one per stream."""
        loop = asyncio.get_running_loop()
        seconds = self._tick_seconds()
        while True:
            await asyncio.sleep(seconds)
            now = loop.time()
            for connection in list(self.connections):
                connection.tick(now)

    def connection_idle(self) -> None:
        if not any(connection.streams for connection in self.connections):
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; calls already open get `grace` seconds to finish, then are cut."""
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.go_away()
        self.connection_idle()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for connection in list(self.connections):
            connection.close()
        self.inflate_executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.sleep(0)
