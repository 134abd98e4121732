"""What a client connection needs to move to another worker of `ferry serve --workers N
--shared-batching` (server/workers/handoff.py implements it; the transports only call it)."""

from __future__ import annotations

from typing import Protocol

HTTP = b"h"  # the kind of connection a moved socket is, as the receiving worker serves it
GRPC = b"g"


class ConnectionMover(Protocol):
    def opened(self) -> None:
        """A client connection of this worker opened (HTTP or gRPC)."""

    def closed(self) -> None:
        """One closed (or moved out)."""

    def target(self, model: str, version: str) -> int | None:
        """The worker an idle HTTP connection whose last request was for (model, version)
        moves to, or None."""

    def accept_target(self) -> int | None:
        """The worker a connection just accepted moves to before anything is read from it
        (gRPC: its HTTP/2 state would not move later), or None."""

    def send(self, descriptor: int, slot: int, kind: bytes) -> bool:
        """Pass the socket to worker `slot` as `kind`; False when it cannot take it now."""
