"""ferry's HTTP/2 gRPC transport on a loopback port, driven by grpcio's client (the one inside
tritonclient) and by hand-written frames for what no well-behaved client sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import hpack
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.protocol.grpc_wire import frames
from server.protocol.grpc_wire.rpc import routes_for
from server.protocol.grpc_wire.server import GrpcWireServer
from server.settings import GrpcLimits
from tests.support.h2_attacker import H2Attacker

MAX_MESSAGE = 2**31 - 1
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
INFER = "/inference.GRPCInferenceService/ModelInfer"


class EchoService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ModelInfer returns its raw inputs; a `sleep_s` parameter makes it slow."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.started.set()
        try:
            await asyncio.sleep(request.parameters["sleep_s"].double_param)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        metadata = dict(context.invocation_metadata())
        return pb.ModelInferResponse(
            id=metadata.get("x-tag", request.id), raw_output_contents=request.raw_input_contents
        )

    async def ModelStreamInfer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(
                    id=request.id, raw_output_contents=request.raw_input_contents
                )
            )


def request(payload: bytes = b"", tag: str = "", sleep_s: float = 0.0) -> Any:
    message = pb.ModelInferRequest(id=tag, raw_input_contents=[payload])
    message.parameters["sleep_s"].double_param = sleep_s
    return message


def serve(
    scenario: Callable[[GrpcWireServer, EchoService, str], Awaitable[None]],
    max_message: int = MAX_MESSAGE,
    limits: GrpcLimits | None = None,
) -> None:
    async def main() -> None:
        service = EchoService()
        server = GrpcWireServer(
            routes_for(
                service,
                pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                service_pb2_grpc.GRPCInferenceServiceServicer,
            ),
            "127.0.0.1",
            0,
            limits or GrpcLimits(max_message_bytes=max_message, max_header_list_bytes=64 * 1024),
        )
        await server.start()
        try:
            await asyncio.wait_for(scenario(server, service, f"127.0.0.1:{server.bound_port}"), 60)
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_concurrent_calls_on_one_channel_each_get_their_own_reply() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            replies = await asyncio.gather(
                *(stub.ModelInfer(request(bytes([i % 256]) * i, tag=str(i))) for i in range(300))
            )
        for i, reply in enumerate(replies):
            assert reply.id == str(i) and reply.raw_output_contents[0] == bytes([i % 256]) * i

    serve(scenario)


def test_messages_larger_than_every_flow_control_window() -> None:
    payload = bytes(range(256)) * (96 * 1024 * 4)  # 96 MiB: over our 64 MiB connection window

    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            replies = await asyncio.gather(
                stub.ModelInfer(request(payload)), stub.ModelInfer(request(payload[::-1]))
            )
        assert replies[0].raw_output_contents[0] == payload
        assert replies[1].raw_output_contents[0] == payload[::-1]

    serve(scenario)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(compression: grpc.Compression) -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url, compression=compression) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(request(b"z" * 100_000))
        assert reply.raw_output_contents[0] == b"z" * 100_000

    serve(scenario)


def test_bidirectional_stream() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            sizes = [0, 1, 10, 5_000_000, 3]
            call = stub.ModelStreamInfer(iter([request(b"s" * n, tag=str(n)) for n in sizes]))
            replies = [reply async for reply in call]
            assert await call.code() == grpc.StatusCode.OK
        assert [r.infer_response.id for r in replies] == [str(n) for n in sizes]
        assert [len(r.infer_response.raw_output_contents[0]) for r in replies] == sizes

    serve(scenario)


def test_metadata_reaches_the_servicer() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(request(), metadata=(("x-tag", "t" * 20_000),))
        assert reply.id == "t" * 20_000

    serve(scenario)


def test_unknown_method_is_unimplemented() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"")
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            health = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # not overridden by the echo
                await health(b"")
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

    serve(scenario)


def test_deadline_cancels_the_call_on_the_server() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(request(sleep_s=30), timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.wait_for(service.cancelled.wait(), 5)
            assert (await stub.ModelInfer(request(b"ok"))).raw_output_contents[0] == b"ok"

    serve(scenario)


def test_client_cancel_reaches_the_servicer() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelInfer(request(sleep_s=30))
            await asyncio.wait_for(service.started.wait(), 5)
            call.cancel()
            await asyncio.wait_for(service.cancelled.wait(), 5)

    serve(scenario)


def test_stop_lets_open_calls_finish_and_refuses_new_ones() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            slow = asyncio.ensure_future(stub.ModelInfer(request(b"kept", sleep_s=0.5)))
            await asyncio.wait_for(service.started.wait(), 5)
            stopping = asyncio.ensure_future(server.stop(grace=10))
            assert (await slow).raw_output_contents[0] == b"kept"
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(request(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not service.cancelled.is_set()

    serve(scenario)


# ---- hand-written frames


async def exchange(url: str, payload: bytes) -> list[tuple[int, int, int, bytes]]:
    """Send raw bytes; return the frames received until the server ends stream 1 or the
    connection."""
    host, port = url.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    received: list[tuple[int, int, int, bytes]] = []
    buffer = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                return received
            buffer += chunk
            while len(buffer) >= 9:
                high, low, kind, flags, stream_id = frames.FRAME_HEADER.unpack_from(buffer)
                length = (high << 16) | low
                if len(buffer) < 9 + length:
                    break
                received.append((kind, flags, stream_id, buffer[9 : 9 + length]))
                buffer = buffer[9 + length :]
                if kind == frames.GOAWAY or (
                    stream_id == 1
                    and flags & frames.END_STREAM
                    and kind in (frames.HEADERS, frames.DATA)
                ):
                    return received
    finally:
        writer.close()


def headers_frame(fields: list[tuple[str, str]], end_stream: bool) -> bytes:
    flags = frames.END_HEADERS | (frames.END_STREAM if end_stream else 0)
    return frames.frame(frames.HEADERS, flags, 1, hpack.Encoder().encode(fields))


def grpc_fields(**overrides: str) -> list[tuple[str, str]]:
    fields = {
        ":method": "POST",
        ":scheme": "http",
        ":path": INFER,
        ":authority": "x",
        "content-type": "application/grpc",
        "te": "trailers",
    }
    return list({**fields, **overrides}.items())


def response_headers(received: list[tuple[int, int, int, bytes]]) -> list[list[tuple[str, str]]]:
    decoder = hpack.Decoder()
    return [
        [(str(k), str(v)) for k, v in decoder.decode(payload)]
        for kind, _, stream_id, payload in received
        if kind == frames.HEADERS
    ]


def test_bad_preface_gets_goaway() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        received = await exchange(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received[-1][0] == frames.GOAWAY
        assert int.from_bytes(received[-1][3][4:8], "big") == frames.PROTOCOL_ERROR

    serve(scenario)


@pytest.mark.parametrize(
    "garbage",
    [
        frames.frame(frames.HEADERS, frames.PADDED | frames.END_HEADERS, 1, b""),  # no pad length
        frames.frame(frames.HEADERS, frames.END_HEADERS, 1, b"\xff\xff\xff\xff"),  # bad HPACK
        frames.frame(frames.SETTINGS, 0, 0, b"\x00\x04\x00"),  # not a multiple of 6
        frames.frame(frames.CONTINUATION, frames.END_HEADERS, 1, b""),  # nothing to continue
        frames.frame(frames.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02"),
    ],
)
def test_malformed_frames_close_only_their_connection(garbage: bytes) -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        received = await exchange(url, frames.PREFACE + frames.settings_frame({}) + garbage)
        assert received[-1][0] == frames.GOAWAY
        assert int.from_bytes(received[-1][3][4:8], "big") != frames.NO_ERROR
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ModelInfer(request(b"ok"))).raw_output_contents[0] == b"ok"

    serve(scenario)


@pytest.mark.parametrize(
    "overrides,status", [({":method": "GET"}, "405"), ({"content-type": "text/plain"}, "415")]
)
def test_requests_that_are_not_grpc_get_an_http_status(
    overrides: dict[str, str], status: str
) -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        received = await exchange(
            url,
            frames.PREFACE
            + frames.settings_frame({})
            + headers_frame(grpc_fields(**overrides), end_stream=True),
        )
        assert response_headers(received) == [[(":status", status)]]

    serve(scenario)


def test_header_block_split_over_continuation_frames() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        block = hpack.Encoder().encode(grpc_fields(**{"x-tag": "c" * 40_000}))
        pieces = [block[i : i + 16_000] for i in range(0, len(block), 16_000)]
        head = frames.frame(frames.HEADERS, 0, 1, pieces[0])
        rest = b"".join(
            frames.frame(
                frames.CONTINUATION, frames.END_HEADERS if i == len(pieces) - 1 else 0, 1, piece
            )
            for i, piece in enumerate(pieces[1:], 1)
        )
        body = request(b"abc").SerializeToString()
        data = frames.frame(
            frames.DATA, frames.END_STREAM, 1, b"\0" + len(body).to_bytes(4, "big") + body
        )
        received = await exchange(
            url, frames.PREFACE + frames.settings_frame({}) + head + rest + data
        )
        headers = response_headers(received)
        assert headers[0][0] == (":status", "200") and headers[-1] == [("grpc-status", "0")]
        # the 40 kB reply is split to the client's default 16 kB frame size
        data_frames = [p for kind, _, sid, p in received if kind == frames.DATA and sid == 1]
        assert len(data_frames) == 3
        message = b"".join(data_frames)
        reply = pb.ModelInferResponse.FromString(message[5:])
        assert reply.id == "c" * 40_000 and reply.raw_output_contents[0] == b"abc"

    serve(scenario)


def test_oversized_unary_message_is_refused_before_it_ends() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        declared = (1 << 20).to_bytes(4, "big")
        received = await exchange(
            url,
            frames.PREFACE
            + frames.settings_frame({})
            + headers_frame(grpc_fields(), end_stream=False)
            + frames.frame(frames.DATA, 0, 1, b"\0" + declared + b"x" * 5000),
        )  # no END_STREAM
        trailers = dict(response_headers(received)[-1])
        assert trailers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert "larger than max" in trailers["grpc-message"]

    serve(scenario, max_message=1000)


def test_two_messages_on_a_unary_call_are_refused() -> None:
    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        body = request().SerializeToString()
        message = b"\0" + len(body).to_bytes(4, "big") + body
        received = await exchange(
            url,
            frames.PREFACE
            + frames.settings_frame({})
            + headers_frame(grpc_fields(), end_stream=False)
            + frames.frame(frames.DATA, frames.END_STREAM, 1, message * 2),
        )
        trailers = dict(response_headers(received)[-1])
        assert trailers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])

    serve(scenario)


# ---- keepalive and connection age (Triton's flags)


def test_an_unanswered_keepalive_ping_closes_the_connection() -> None:
    limits = GrpcLimits(
        keepalive_time_ms=200, keepalive_timeout_ms=300, keepalive_permit_without_calls=True
    )

    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        client = await H2Attacker.connect(url)  # reads everything, acknowledges no PING
        assert await client.wait_until(lambda: client.outcome.closed, 5)
        assert client.outcome.pings == 1 and client.outcome.goaway is not None
        assert client.outcome.goaway[1] == "keepalive ping not acknowledged"
        await client.close()

    serve(scenario, limits=limits)


def test_connection_age_sends_goaway_then_cuts_calls_after_the_grace() -> None:
    limits = GrpcLimits(max_connection_age_ms=300, max_connection_age_grace_ms=300)

    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            quick = await stub.ModelInfer(request(b"ok"))  # a young connection serves
            assert quick.raw_output_contents[0] == b"ok"
        client = await H2Attacker.connect(url)
        body = request(sleep_s=10).SerializeToString()
        client.send(client.headers(1, grpc_fields(), False))
        client.send(H2Attacker.data(1, b"\0" + len(body).to_bytes(4, "big") + body, True))
        assert await client.wait_until(lambda: client.outcome.goaway is not None, 5)
        assert client.outcome.goaway is not None and client.outcome.goaway[0] == frames.NO_ERROR
        assert client.outcome.status(1) is None  # the open call goes on during the grace
        assert await client.wait_until(lambda: client.outcome.status(1) is not None, 5)
        assert client.outcome.status(1) == str(grpc.StatusCode.UNAVAILABLE.value[0])
        await client.close()

    serve(scenario, limits=limits)


def _upload_pinging_before_each_part(message_bytes: int, part: int) -> None:
    """One call whose message of `message_bytes` goes in parts of `part` bytes, a PING before
    each: the connection must stay open and the call reach the servicer."""

    async def scenario(server: GrpcWireServer, service: EchoService, url: str) -> None:
        client = await H2Attacker.connect(url)
        body = request(b"x" * message_bytes, sleep_s=30).SerializeToString()
        message = b"\0" + len(body).to_bytes(4, "big") + body
        client.send(client.headers(1, grpc_fields(), False))
        for start in range(0, len(message), part):
            client.send(frames.frame(frames.PING, 0, 0, bytes(8)))
            end_stream = start + part >= len(message)
            assert await client.send_flow_controlled(1, message[start : start + part], end_stream)
        assert await client.wait_until(service.started.is_set, 10)
        assert client.outcome.goaway is None and not client.outcome.closed
        await client.close()

    serve(scenario)


def test_pings_during_a_large_upload_are_not_strikes() -> None:
    """gRPC core resets a connection's ping strikes whenever it sends a connection WINDOW_UPDATE
    (chttp2's FlushWindowUpdates), so a client that pings while it uploads a large message (BDP
    probes) is not sent GOAWAY too_many_pings; ferry did, under load (seen in CI). A connection
    WINDOW_UPDATE goes out every 32 MiB received: 4 pings, 3 strikes without the resets."""
    _upload_pinging_before_each_part(100 * 1024 * 1024, 33 * 1024 * 1024)


def test_pings_between_small_parts_of_an_upload_are_not_strikes() -> None:
    """gRPC core also sends the connection WINDOW_UPDATE with any other write, a ping's ACK
    included, so pings between parts of an upload far under 32 MiB reset the strikes too
    (two 96 MiB messages from grpcio got GOAWAY too_many_pings once, in a loaded suite):
    9 pings, 8 strikes without the resets."""
    _upload_pinging_before_each_part(8 * 1024 * 1024, 1024 * 1024)
