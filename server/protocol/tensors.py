"""Tensor bytes and JSON values <-> numpy, shared by the HTTP binary extension and gRPC raw
contents: little-endian row-major data; BYTES elements are a u32 LE length + the raw bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.errors import ErrorKind, ServingError, invalid
from server.types import ALL_DATATYPES, ELEMENT_SIZE_BY_DATATYPE, NUMPY_DTYPE_BY_DATATYPE

_U32 = struct.Struct("<I")
MAX_DIMS = 64
# Triton's HTTP_MAX_JSON_NESTING_DEPTH (server/src/common.h): JSON `data` whose leaves sit this
# many arrays deep is refused
MAX_JSON_DEPTH = 100


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Validate a wire shape (ints >= 0) and return it as a tuple."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise invalid(f"input '{name}': shape must be a list of at most {MAX_DIMS} dimensions")
    dims = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise invalid(
                f"input '{name}': invalid shape {list(shape)}: dimensions must be "
                "non-negative integers"
            )
        dims.append(dim)
    return tuple(dims)


def check_datatype(name: str, datatype: Any) -> str:
    """Validate a wire datatype; BF16 is a valid wire type that no ferry runtime takes."""
    if not isinstance(datatype, str) or datatype not in ALL_DATATYPES:
        raise invalid(f"input '{name}': invalid datatype '{datatype}'")
    if datatype == "BF16":
        raise ServingError(ErrorKind.UNSUPPORTED, f"input '{name}': BF16 tensors are not supported")
    return str(datatype)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def array_from_bytes(
    name: str,
    buffer: bytes | memoryview,
    datatype: str,
    shape: tuple[int, ...],
    offset: int = 0,
    size: int | None = None,
) -> np.ndarray:
    """Decode one tensor from `buffer[offset:offset+size]`."""
    size = len(buffer) - offset if size is None else size
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(name, buffer, offset, size, count, shape)
    expected = count * ELEMENT_SIZE_BY_DATATYPE[datatype]
    if size != expected:
        raise invalid(
            f"input '{name}': unexpected size {size} bytes for shape {list(shape)} and "
            f"datatype {datatype}, expecting {expected} bytes"
        )
    dtype = NUMPY_DTYPE_BY_DATATYPE[datatype].newbyteorder("<")
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)


def _deserialize_bytes(
    name: str,
    buffer: bytes | memoryview,
    offset: int,
    size: int,
    count: int,
    shape: tuple[int, ...],
) -> np.ndarray:
    if not isinstance(buffer, bytes):  # slices of bytes are the element objects themselves
        buffer, offset = bytes(buffer[offset : offset + size]), 0
    unpack = _U32.unpack_from
    items: list[bytes] = []
    append = items.append
    position, end = offset, offset + size
    for index in range(count):  # each element takes 4 bytes or more: at most size / 4 rounds
        if position + 4 > end:
            if position == end:
                raise invalid(
                    f"input '{name}': expected {count} BYTES elements for shape "
                    f"{list(shape)}, got {index}"
                )
            raise invalid(f"input '{name}': truncated BYTES element length")
        (length,) = unpack(buffer, position)
        position += 4
        stop = position + length
        if stop > end:
            raise invalid(f"input '{name}': BYTES element of {length} bytes runs past the data")
        append(buffer[position:stop])
        position = stop
    if position != end:
        raise invalid(
            f"input '{name}': expected {count} BYTES elements for shape {list(shape)}, "
            f"got more ({end - position} bytes left after the last one)"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def array_to_bytes(array: np.ndarray) -> bytes:
    """Encode a tensor's data for the wire."""
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_U32.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def array_from_json(name: str, data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a JSON `data` field (nested or flat, row-major)."""
    if datatype in ("FP16", "BF16"):
        raise invalid(f"input '{name}': {datatype} data must be sent in binary format")
    count = element_count(shape)
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            array = np.empty(len(flat), dtype=np.object_)
            array[:] = [
                item.encode() if isinstance(item, str) else str(item).encode() for item in flat
            ]
        else:
            array = np.asarray(data, dtype=NUMPY_DTYPE_BY_DATATYPE[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        _check_depth(data)  # numpy refuses deep nesting too: Triton's message when that is why
        raise invalid(f"input '{name}': data does not match datatype {datatype}: {exc}") from exc
    if array.size != count:
        raise invalid(
            f"input '{name}': {array.size} data elements for shape {list(shape)}, expecting {count}"
        )
    return array.reshape(shape)


def _nesting_error() -> ServingError:
    return invalid(f"JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})")


def _check_depth(data: Any) -> None:
    """Refuse `data` whose first elements nest MAX_JSON_DEPTH arrays deep."""
    depth = 0
    while isinstance(data, list) and data:
        depth += 1
        if depth >= MAX_JSON_DEPTH:
            raise _nesting_error()
        data = data[0]


def _flatten(data: Any) -> list[Any]:
    """Row-major leaves of nested lists, iteratively (deep nesting is a 400, not a
    RecursionError)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    append = flat.append
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) + 1 >= MAX_JSON_DEPTH:
                    raise _nesting_error()
                stack.append(iter(item))
                break
            append(item)
        else:
            stack.pop()
    return flat


def array_to_json(array: np.ndarray) -> list[Any]:
    """A flat list for a JSON `data` field."""
    if array.dtype == np.object_:
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1)
        ]
    return array.reshape(-1).tolist()  # type: ignore[no-any-return]
