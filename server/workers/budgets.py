"""The server-wide budgets of `ferry serve`, split between the workers of `--workers N`.

A limit a user sets for the server (gRPC connections, the bytes requests may hold buffered over
HTTP and gRPC, the response cache's size) must bound the server, not each of its processes: each
worker gets 1/N of it (at least 1). The kernel spreads connections over the workers evenly, so
the server reaches its limit within a few connections' difference; a single message or cached
response must then fit in one worker's share (a 1 GiB budget with two workers takes messages up
to 512 MiB)."""

from __future__ import annotations

import dataclasses
from typing import Any

from server.response_cache import CacheSettings
from server.settings import ServerSettings


def _share(total: int, workers: int) -> int:
    return max(1, total // workers) if total > 0 else total


def worker_budgets(settings: ServerSettings) -> dict[str, Any]:
    """The fields of a worker's settings that hold its share of the server-wide budgets."""
    workers = settings.workers
    if workers <= 1:
        return {}
    grpc = settings.grpc_limits
    return {
        "grpc_limits": dataclasses.replace(
            grpc,
            max_connections=_share(grpc.max_connections, workers),
            max_buffered_request_bytes=_share(grpc.max_buffered_request_bytes, workers),
        ),
        "http_max_buffered_bytes": _share(settings.http_max_buffered_bytes, workers),
        "cache": CacheSettings(settings.cache.size_bytes // workers),
    }
