"""The pure parts of ferry's gRPC transport: HPACK blocks we send, the header cache, message
framing, timeouts and routes."""

from __future__ import annotations

import gzip
import zlib

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.protocol.grpc_wire import frames
from server.protocol.grpc_wire.headers import HeaderDecoder
from server.protocol.grpc_wire.limits import RequestBudget
from server.protocol.grpc_wire.messages import Inflation, split_messages
from server.protocol.grpc_wire.rpc import (
    INTERNAL,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    AbortError,
    routes_for,
)


def decoded(block: bytes) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in hpack.Decoder().decode(block)]


def test_response_blocks_decode_as_grpc_headers() -> None:
    assert decoded(frames.RESPONSE_HEADERS) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
    ]
    assert decoded(frames.TRAILERS_OK) == [("grpc-status", "0")]
    assert decoded(frames.http_status_block(415)) == [(":status", "415")]


def test_status_block_percent_encodes_the_message() -> None:
    message = "model 'x' not found: 100% über\n" + "y" * 300  # long: multi-byte length
    trailers = decoded(frames.status_block(5, message, with_headers=False))
    assert trailers[0] == ("grpc-status", "5")
    name, value = trailers[1]
    assert name == "grpc-message"
    assert value.startswith("model 'x' not found: 100%25 %C3%BCber%0Ay")
    assert value.isascii() and len(value) > 300
    trailers_only = decoded(frames.status_block(14, "", with_headers=True))
    assert trailers_only[0] == (":status", "200") and trailers_only[-1] == ("grpc-status", "14")


@pytest.mark.parametrize(
    "value,seconds",
    [("100m", 0.1), ("5S", 5.0), ("2M", 120.0), ("1H", 3600.0), ("250u", 250e-6), ("7n", 7e-9)],
)
def test_grpc_timeout(value: str, seconds: float) -> None:
    assert frames.parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "m", "5x", "-5m", "1234567890S"])
def test_malformed_grpc_timeout(value: str) -> None:
    assert frames.parse_grpc_timeout(value) is None


def request_headers(path: str, timeout: str | None = None) -> list[tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-request-tag", "abc"),
    ]
    return headers + ([("grpc-timeout", timeout)] if timeout else [])


def test_header_cache_follows_the_dynamic_table() -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder(16 * 1024)
    first = encoder.encode(request_headers("/svc/A"))  # literals added to the table
    head = decoder.decode(first)
    assert (head.method, head.path, head.content_type) == ("POST", "/svc/A", "application/grpc")
    assert head.metadata == (("x-request-tag", "abc"),)
    second = encoder.encode(request_headers("/svc/A"))  # all indexed now
    assert second != first and len(second) < 10
    assert decoder.decode(second) == head
    assert decoder.decode(second) is decoder.decode(second)  # served from the cache
    # A block that adds to the table changes what the same index bytes mean afterwards.
    third = decoder.decode(encoder.encode(request_headers("/svc/B", timeout="10m")))
    assert (third.path, third.timeout) == ("/svc/B", "10m")
    fourth = encoder.encode(request_headers("/svc/B", timeout="10m"))
    assert decoder.decode(fourth).path == "/svc/B"
    assert decoder.decode(encoder.encode(request_headers("/svc/A"))).path == "/svc/A"


def framed(payload: bytes, compressed: int = 0) -> bytes:
    return bytes((compressed,)) + len(payload).to_bytes(4, "big") + payload


def test_split_messages_keeps_a_partial_tail() -> None:
    buffer = bytearray(framed(b"one") + framed(b"") + framed(b"three")[:6])
    assert split_messages(buffer, 1 << 20) == [(0, b"one"), (0, b"")]
    assert buffer == framed(b"three")[:6]
    buffer += framed(b"three")[6:]
    assert split_messages(buffer, 1 << 20) == [(0, b"three")] and not buffer


def test_split_messages_refuses_an_oversized_prefix_before_its_body_arrives() -> None:
    with pytest.raises(AbortError) as caught:
        split_messages(bytearray(framed(b"x" * 10)[:5]), 9)
    assert caught.value.code == RESOURCE_EXHAUSTED


def inflate(
    payload: bytes, encoding: str, limit: int = 1 << 30, budget_bytes: int = 1 << 30
) -> bytes:
    inflation = Inflation(payload, encoding, limit, RequestBudget(budget_bytes))
    inflation.finish()
    return bytes(inflation.output)


def test_inflation_encodings() -> None:
    assert inflate(gzip.compress(b"data"), "gzip") == b"data"
    assert inflate(zlib.compress(b"data"), "deflate") == b"data"
    big = bytes(range(256)) * 20_000  # several inflation steps
    assert inflate(gzip.compress(big), "gzip") == big
    for payload, encoding, code in [
        (b"x", "snappy", UNIMPLEMENTED),
        (b"x", "", INTERNAL),
        (b"not gzip", "gzip", INTERNAL),
        (gzip.compress(b"data")[:-6], "gzip", INTERNAL),  # truncated
        (gzip.compress(b"data") + b"junk", "gzip", INTERNAL),
    ]:
        with pytest.raises(AbortError) as caught:
            inflate(payload, encoding)
        assert caught.value.code == code


def test_inflation_stops_at_the_size_limit_and_at_the_budget() -> None:
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in about 64 kB
    with pytest.raises(AbortError) as caught:
        inflate(bomb, "gzip", limit=3 << 20)
    assert caught.value.code == RESOURCE_EXHAUSTED and "larger than max" in caught.value.details
    budget = RequestBudget(2 << 20)
    inflation = Inflation(bomb, "gzip", 1 << 30, budget)
    with pytest.raises(AbortError) as caught:
        inflation.finish()
    assert caught.value.code == RESOURCE_EXHAUSTED and "buffering" in caught.value.details
    assert len(inflation.output) <= 2 << 20 and budget.inflating == inflation.charged
    inflation.release()
    assert budget.inflating == 0 and not inflation.output


def test_abandoned_inflation_gives_its_charge_back() -> None:
    budget = RequestBudget(1 << 30)
    inflation = Inflation(gzip.compress(bytes(8 << 20)), "gzip", 1 << 30, budget)
    assert not inflation.step() and budget.inflating > 0
    inflation.abandon()  # not running: released at once
    assert budget.inflating == 0
    with pytest.raises(AbortError):
        inflation.finish()  # a thread that still held it stops at its next step
    assert budget.inflating == 0


class CheckOnly(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    async def Check(self, request: object, context: object) -> object:
        return health_pb2.HealthCheckResponse()


def test_routes_cover_only_overridden_methods() -> None:
    routes = routes_for(
        CheckOnly(),
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        health_pb2_grpc.HealthServicer,
    )
    assert list(routes) == ["/grpc.health.v1.Health/Check"]
    route = routes["/grpc.health.v1.Health/Check"]
    assert route.request_type is health_pb2.HealthCheckRequest
    assert not route.client_streaming and not route.server_streaming


def test_abort_carries_the_numeric_code() -> None:
    import asyncio

    from server.protocol.grpc_wire.rpc import RpcContext

    context = RpcContext((("k", "v"),), None, "ipv4:127.0.0.1:1")
    with pytest.raises(AbortError) as caught:
        asyncio.run(context.abort(grpc.StatusCode.NOT_FOUND, "gone"))
    assert (caught.value.code, caught.value.details) == (5, "gone")
    assert context.invocation_metadata() == (("k", "v"),) and context.time_remaining() is None
