"""The server-wide budget of `ferry serve` that is split between the workers of `--workers N`.

A limit a user sets for the server must bound the server, not each of its processes. The bytes
requests may hold buffered over HTTP and gRPC, the response cache's size and, on ferry's gRPC
transport, the gRPC connections are pools that the workers lease from
(server/workers/byte_pool.py): one request, one worker's cached answers or one worker's
connections may take all of it. On the grpcio transport, grpc core counts the connections
(`grpc.max_allowed_incoming_connections`) in each process, so `--grpc-max-connections` is split
there, each worker getting 1/N (at least 1): the kernel spreads connections over the workers
evenly, so the server reaches its limit within a few connections' difference."""

from __future__ import annotations

import dataclasses
from typing import Any

from server.settings import GrpcTransport, ServerSettings


def _share(total: int, workers: int) -> int:
    return max(1, total // workers) if total > 0 else total


def worker_budgets(settings: ServerSettings) -> dict[str, Any]:
    """The fields of a worker's settings that hold its share of the server-wide budgets."""
    workers = settings.workers
    if workers <= 1 or settings.grpc_transport != GrpcTransport.GRPCIO:
        return {}
    grpc = settings.grpc_limits
    return {
        "grpc_limits": dataclasses.replace(
            grpc,
            max_connections=_share(grpc.max_connections, workers),
        ),
    }
