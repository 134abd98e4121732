"""HTTP/2 framing (RFC 9113) and the few HPACK blocks (RFC 7541) a gRPC server sends.

Header blocks we send never touch the HPACK dynamic table (literals without indexing), so our
encoder keeps no state; the client's blocks are decoded by the `hpack` library.
"""

from __future__ import annotations

import struct
from urllib.parse import quote

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">BHBBL")  # 24-bit length as (high byte, low 16 bits), type, flags, id
FRAME_HEADER_BYTES = 9

# Frame types
(
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH_PROMISE,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
) = range(10)

# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
LARGEST_MAX_FRAME = 2**24 - 1
MAX_WINDOW = 2**31 - 1

GRPC_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(
        SETTINGS, 0, 0, b"".join(struct.pack(">HL", key, value) for key, value in settings.items())
    )


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">L", error_code))


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, error_code) + debug)


def _integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """HPACK integer representation (RFC 7541 §5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0x00) + value  # no Huffman coding


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing and a new name (RFC 7541 §6.2.2)."""
    return b"\x00" + _string(name) + _string(value)


# Every block starts with a dynamic table size update to 0: our encoder uses no table, and this
# stays valid whatever SETTINGS_HEADER_TABLE_SIZE the client announces.
_TABLE_SIZE_ZERO = b"\x20"
_STATUS_200 = b"\x88"  # static table index 8
_CONTENT_TYPE_GRPC = b"\x0f\x10" + _string(b"application/grpc")  # name: static index 31
RESPONSE_HEADERS = (
    _TABLE_SIZE_ZERO
    + _STATUS_200
    + _CONTENT_TYPE_GRPC
    + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
)
TRAILERS_OK = _TABLE_SIZE_ZERO + literal(b"grpc-status", b"0")


def status_block(code: int, message: str, with_headers: bool) -> bytes:
    """Trailers for a status; `with_headers` makes it a trailers-only response."""
    block = RESPONSE_HEADERS if with_headers else _TABLE_SIZE_ZERO
    block += literal(b"grpc-status", str(code).encode())
    if message:
        # gRPC's percent-encoding: printable ASCII except '%' passes through (PROTOCOL-HTTP2.md)
        encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8")
        block += literal(b"grpc-message", encoded.encode("ascii"))
    return block


def http_status_block(status: int) -> bytes:
    """A bare `:status` for requests that are not gRPC at all (wrong method/content-type)."""
    return _TABLE_SIZE_ZERO + b"\x08" + _string(str(status).encode())  # name: static index 8


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a `grpc-timeout` header ("100m", "5S"); None when malformed."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = GRPC_TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit
