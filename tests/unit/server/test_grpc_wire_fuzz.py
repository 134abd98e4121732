"""Property-based fuzzing of ferry's gRPC transport: HTTP/2 frames, header blocks, gRPC message
framing and inflation. A few hundred examples each in `make test`; `make fuzz` runs the `fuzz`
marker with the `fuzz` hypothesis profile (many more, see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
import zlib
from typing import Any

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.protocol.grpc_wire import frames
from server.protocol.grpc_wire.connection import GrpcConnection
from server.protocol.grpc_wire.headers import HeaderDecoder
from server.protocol.grpc_wire.limits import RequestBudget
from server.protocol.grpc_wire.messages import Inflation, split_messages
from server.protocol.grpc_wire.rpc import RESOURCE_EXHAUSTED, AbortError, routes_for
from server.protocol.grpc_wire.server import GrpcWireServer
from server.settings import GrpcLimits

pytestmark = pytest.mark.fuzz
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


class Echo(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return pb.ModelInferResponse(id=request.id)

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id))


class FakeTransport:
    """What GrpcConnection asks of an asyncio transport; it keeps what is written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def written_frames(out: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames a connection wrote: each must be whole and well-formed."""
    found, offset = [], 0
    while offset < len(out):
        high, low, kind, flags, stream_id = frames.FRAME_HEADER.unpack_from(out, offset)
        length = (high << 16) | low
        payload = out[offset + 9 : offset + 9 + length]
        assert len(payload) == length, "a frame cut short"
        found.append((kind, flags, stream_id, bytes(payload)))
        offset += 9 + length
    return found


# ---- HTTP/2 frames into a connection

_field = st.sampled_from(
    [
        (":method", "POST"),
        (":method", "GET"),
        (":path", INFER),
        (":path", STREAM_INFER),
        (":path", "/nope"),
        (":scheme", "http"),
        ("content-type", "application/grpc"),
        ("content-type", "text/plain"),
        ("te", "trailers"),
        ("grpc-timeout", "1S"),
        ("grpc-timeout", "bad"),
        ("grpc-encoding", "gzip"),
        ("grpc-encoding", "snappy"),
        ("x-meta", "v" * 40),
    ]
)
_message = st.builds(
    lambda tag, compressed: (
        b"\1" + len(gzip.compress(tag)).to_bytes(4, "big") + gzip.compress(tag)
        if compressed
        else b"\0"
        + len(pb.ModelInferRequest(id=tag.hex()).SerializeToString()).to_bytes(4, "big")
        + pb.ModelInferRequest(id=tag.hex()).SerializeToString()
    ),
    st.binary(max_size=40),
    st.booleans(),
)
_stream_id = st.sampled_from([0, 1, 3, 5, 7, 2, 2**31 - 1])


@st.composite
def frame_sequences(draw: st.DrawFn) -> list[bytes]:
    encoder = hpack.Encoder()
    out = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 11))
        flags = draw(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0xFF]))
        stream_id = draw(_stream_id)
        if kind == frames.HEADERS and draw(st.booleans()):
            payload = encoder.encode(draw(st.lists(_field, max_size=8)))
        elif kind == frames.DATA and draw(st.booleans()):
            payload = draw(_message)
        elif kind == frames.SETTINGS and draw(st.booleans()):
            pairs = draw(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1))))
            payload = b"".join(struct.pack(">HL", k, v) for k, v in pairs[:6])
        elif kind == frames.WINDOW_UPDATE and draw(st.booleans()):
            payload = struct.pack(">L", draw(st.integers(0, 2**32 - 1)))
        else:
            payload = draw(st.binary(max_size=64))
        out.append(frames.frame(kind, flags, stream_id, payload))
    if draw(st.booleans()):
        out.append(draw(st.binary(max_size=32)))  # trailing garbage
    return out


def feed(sequence: list[bytes], chunk: int) -> None:
    """Run one connection over `sequence` (cut into reads of `chunk` bytes) and check it."""

    async def scenario() -> None:
        routes = routes_for(
            Echo(),
            pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            service_pb2_grpc.GRPCInferenceServiceServicer,
        )
        server = GrpcWireServer(routes, "127.0.0.1", 0, GrpcLimits(max_message_bytes=1 << 16))
        connection = GrpcConnection(server)
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        data = frames.PREFACE + frames.settings_frame({}) + b"".join(sequence)
        for start in range(0, len(data), chunk):
            if transport.closed:
                break
            connection.data_received(data[start : start + chunk])
            for _ in range(3):
                await asyncio.sleep(0)
        connection.flush()
        for kind, _, _, payload in written_frames(bytes(transport.out)):
            if kind == frames.HEADERS:
                hpack.Decoder().decode(payload)  # every block we send decodes
        connection.connection_lost(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert not connection.streams
        assert server.budget.used == 0 and server.budget.inflating == 0, "budget leaked"
        server.inflate_executor.shutdown(wait=True)

    asyncio.run(scenario())


@given(frame_sequences(), st.sampled_from([1, 7, 64, 1 << 20]))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_frame_sequences_never_break_the_connection_or_leak(
    sequence: list[bytes], chunk: int
) -> None:
    feed(sequence, chunk)


@given(st.binary(max_size=300), st.sampled_from([1, 9, 4096]))
def test_raw_bytes_after_the_preface(raw: bytes, chunk: int) -> None:
    feed([raw], chunk)


# ---- header blocks


@given(st.binary(max_size=200))
def test_header_decoder_raises_only_protocol_errors(block: bytes) -> None:
    # the connection turns these into GOAWAY; anything else would escape data_received
    with contextlib.suppress(hpack.HPACKError, ValueError, IndexError):
        HeaderDecoder(16 * 1024).decode(block)


_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)
_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@given(st.lists(st.tuples(_names, _values), max_size=20), st.booleans())
def test_header_blocks_round_trip(fields: list[tuple[str, str]], huffman: bool) -> None:
    encoder = hpack.Encoder()
    decoder = HeaderDecoder(16 * 1024)
    request = [(":method", "POST"), (":path", INFER), *((f"x-{n}", v) for n, v in fields)]
    for _ in range(2):  # the second block is mostly indexes into the dynamic table
        head = decoder.decode(encoder.encode(request, huffman=huffman))
        assert head.method == "POST" and head.path == INFER
        assert list(head.metadata) == [(f"x-{n}", v) for n, v in fields]


# ---- gRPC message framing and decoding


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(1, 17))
def test_split_messages_in_any_chunks(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(b"\0" + len(p).to_bytes(4, "big") + p for p in payloads)
    buffer, found = bytearray(), []
    for start in range(0, len(stream), chunk):
        buffer += stream[start : start + chunk]
        found += [payload for _, payload in split_messages(buffer, 1 << 20)]
    assert found == payloads and not buffer


@given(st.binary(max_size=64), st.integers(0, 40))
def test_split_messages_refuses_only_by_size(raw: bytes, limit: int) -> None:
    try:
        split_messages(bytearray(raw), limit)
    except AbortError as exc:
        assert exc.code == RESOURCE_EXHAUSTED


@given(st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "identity", "x"]))
def test_inflating_garbage_raises_only_abort(payload: bytes, encoding: str) -> None:
    budget = RequestBudget(1 << 20)
    try:
        inflation = Inflation(payload, encoding, 1 << 16, budget)
        inflation.finish()
    except AbortError:
        return
    finally:
        assert budget.inflating <= 1 << 20
    inflation.release()
    assert budget.inflating == 0


@given(st.binary(max_size=5000), st.sampled_from(["gzip", "deflate"]), st.integers(0, 6000))
def test_inflation_round_trips_within_its_limit(data: bytes, encoding: str, limit: int) -> None:
    compressed = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
    budget = RequestBudget(1 << 20)
    inflation = Inflation(compressed, encoding, limit, budget)
    try:
        inflation.finish()
    except AbortError as exc:
        assert exc.code == RESOURCE_EXHAUSTED and len(data) > limit
        inflation.release()
        assert budget.inflating == 0
        return
    assert len(data) <= limit and bytes(inflation.output) == data


@given(st.binary(max_size=200))
def test_request_messages_parse_or_fail_with_internal(payload: bytes) -> None:
    route = routes_for(
        Echo(),
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        service_pb2_grpc.GRPCInferenceServiceServicer,
    )[INFER]
    try:
        GrpcConnection.parse_request(route, payload)
    except AbortError as exc:
        assert exc.code == 13  # INTERNAL, as grpcio answers an unparsable message
