"""Request header blocks → `RequestHead`, with HPACK decoding cached per block.

gRPC clients send nearly the same header block on every call; once its fields sit in the HPACK
dynamic table the block is a handful of index bytes, identical call after call. A block whose
decoding leaves the table untouched always decodes the same way while the table stays the same,
so its result is cached until the table next changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import hpack

MAX_HEADER_LIST_BYTES = 64 * 1024
_CACHED_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What one request's headers say, and its custom metadata in arrival order."""

    method: str
    path: str
    content_type: str
    timeout: str
    encoding: str
    metadata: tuple[tuple[str, str], ...]


def request_head(fields: list[tuple[str, str]]) -> RequestHead:
    method = path = content_type = timeout = encoding = ""
    metadata = []
    for name, value in fields:
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
    return RequestHead(method, path, content_type, timeout, encoding, tuple(metadata))


class HeaderDecoder:
    """One connection's HPACK decoder, remembering what unchanged-table blocks decoded to."""

    def __init__(self) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
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
        elif len(self._cache) < _CACHED_BLOCKS:
            self._cache[block] = head
        return head
