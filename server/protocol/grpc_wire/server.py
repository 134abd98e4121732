"""The listener: accepts connections, holds the routes, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from server.protocol.grpc_wire.connection import GrpcConnection
from server.protocol.grpc_wire.rpc import Route


class GrpcWireServer:
    """gRPC over HTTP/2 served straight from the event loop (h2c, or TLS with `ssl_context`).

    The surface `server/app.py` uses from grpc.aio.Server: `start`, `stop(grace)`.
    """

    def __init__(
        self,
        routes: dict[str, Route],
        host: str,
        port: int,
        max_message_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.routes = routes
        self.ssl_context = ssl_context
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self.connections: set[GrpcConnection] = set()
        self._listener: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: GrpcConnection(self),
            self.host,
            self.port,
            reuse_address=True,
            backlog=4096,
            ssl=self.ssl_context,
        )

    @property
    def bound_port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    def connection_idle(self) -> None:
        if not any(connection.streams for connection in self.connections):
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; calls already open get `grace` seconds to finish, then are cut."""
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.go_away()
        self.connection_idle()
        if grace:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for connection in list(self.connections):
            connection.close()
        await asyncio.sleep(0)
