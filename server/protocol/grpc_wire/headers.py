"""Request header blocks → `RequestHead`, with HPACK decoding cached per block.

gRPC clients send nearly the same header block on every call; once its fields sit in the HPACK
dynamic table the block is a handful of index bytes, identical call after call. A block whose
decoding leaves the table untouched always decodes the same way while the table stays the same,
so its result is cached until the table next changes (only small blocks: the cache must not let
a client park large blocks in memory).

A block is size-checked before hpack sees it (hpack copies the rest of the block for every literal,
so its cost grows with the square of the block's length): the caller refuses blocks over twice the
header list limit, hpack refuses decoded lists over that, and a list over the limit itself is
refused by the caller with RESOURCE_EXHAUSTED on its stream (gRPC core's soft and hard limits).
"""

from __future__ import annotations

from dataclasses import dataclass

import hpack

_CACHED_BLOCKS = 256
_CACHED_BLOCK_BYTES = 1024
HEADER_FIELD_OVERHEAD = 32  # RFC 7541 §4.1: a field's size is its name, its value, and 32


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What one request's headers say, and its custom metadata in arrival order."""

    method: str
    path: str
    content_type: str
    timeout: str
    encoding: str
    metadata: tuple[tuple[str, str], ...]
    list_size: int  # SETTINGS_MAX_HEADER_LIST_SIZE's measure of the whole list


def request_head(fields: list[tuple[str, str]]) -> RequestHead:
    method = path = content_type = timeout = encoding = ""
    metadata = []
    list_size = 0
    for name, value in fields:
        list_size += len(name) + len(value) + HEADER_FIELD_OVERHEAD
        if name.startswith(":"):
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
        elif name == "content-type":
            content_type = value
        elif name == "grpc-timeout":
            timeout = value
        elif name == "grpc-encoding":
            encoding = value
        elif name != "te":
            metadata.append((name, value))
    return RequestHead(method, path, content_type, timeout, encoding, tuple(metadata), list_size)


class HeaderDecoder:
    """One connection's HPACK decoder, remembering what unchanged-table blocks decoded to."""

    def __init__(self, max_header_list_bytes: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=2 * max_header_list_bytes)
        self._cache: dict[bytes, RequestHead] = {}

    def _table_state(self) -> tuple[int, object, int]:
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return len(entries), entries[0] if entries else None, table.maxsize

    def decode(self, block: bytes) -> RequestHead:
        """Raises hpack.HPACKError on a malformed block (a connection error)."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        before = self._table_state()
        fields = self._decoder.decode(block)
        head = request_head([(str(name), str(value)) for name, value in fields])
        after = self._table_state()
        if after[0] != before[0] or after[1] is not before[1] or after[2] != before[2]:
            self._cache.clear()
        elif len(self._cache) < _CACHED_BLOCKS and len(block) <= _CACHED_BLOCK_BYTES:
            self._cache[block] = head
        return head
