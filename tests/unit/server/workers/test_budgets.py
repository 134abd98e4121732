"""The server-wide budget split between the workers (gRPC connections on the grpcio transport):
the shares add up to at most the whole; the buffered bytes, the response cache's size and ferry's
own gRPC transport's connections are pools, not split (test_byte_pool.py,
test_response_cache.py, tests/integration/server/test_workers_budgets.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from server.response_cache import CacheSettings
from server.settings import GrpcLimits, GrpcTransport, ServerSettings
from server.workers.budgets import worker_budgets


def test_each_worker_gets_its_share_of_the_servers_budgets() -> None:
    settings = ServerSettings(
        Path("repo"),
        workers=3,
        grpc_transport=GrpcTransport.GRPCIO,  # grpc core counts its connections per process
        grpc_limits=GrpcLimits(max_connections=128, max_buffered_request_bytes=3000),
        http_max_buffered_bytes=1000,
        cache=CacheSettings(900),
    )
    worker = dataclasses.replace(settings, **worker_budgets(settings))
    assert worker.grpc_limits.max_connections == 42  # 3 x 42 <= 128
    # the buffered bytes are one pool the workers lease from (test_byte_pool.py)
    assert worker.grpc_limits.max_buffered_request_bytes == 3000
    assert worker.http_max_buffered_bytes == 1000
    assert worker.cache.size_bytes == 900  # a pool too (test_response_cache.py)
    # what is not a server-wide budget stays as it is
    assert worker.grpc_limits.max_concurrent_streams == settings.grpc_limits.max_concurrent_streams
    assert worker.http_max_request_bytes == settings.http_max_request_bytes


def test_a_single_process_keeps_its_settings_and_no_share_is_zero() -> None:
    assert worker_budgets(ServerSettings(Path("repo"), workers=1)) == {}
    tiny = ServerSettings(
        Path("repo"),
        workers=4,
        grpc_transport=GrpcTransport.GRPCIO,
        grpc_limits=GrpcLimits(max_connections=2),
    )
    assert worker_budgets(tiny)["grpc_limits"].max_connections == 1


def test_ferrys_grpc_transport_leases_connections_from_the_server() -> None:
    settings = ServerSettings(Path("repo"), workers=3, grpc_limits=GrpcLimits(max_connections=9))
    assert settings.grpc_transport == GrpcTransport.FERRY
    assert worker_budgets(settings) == {}  # each worker sees the server's 9
