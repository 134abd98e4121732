"""Tensor bytes and JSON values <-> numpy, shared by the HTTP binary extension and gRPC raw
contents: little-endian row-major data; BYTES elements are a u32 LE length + the raw bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.errors import ServingError, invalid
from server.types import ALL_DATATYPES, ELEMENT_SIZE_BY_DATATYPE, NUMPY_DTYPE_BY_DATATYPE

_U32 = struct.Struct("<I")
# the wire's byte order, built once (a dtype's newbyteorder() costs a new object per call)
WIRE_DTYPE_BY_DATATYPE = {
    name: dtype.newbyteorder("<")
    for name, dtype in NUMPY_DTYPE_BY_DATATYPE.items()
    if name != "BYTES"
}
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
    if datatype == "BF16":  # no model ferry runs takes BF16: a datatype mismatch, as in Triton
        raise invalid(f"input '{name}': data-type is 'BF16', which no model here accepts")
    return str(datatype)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


_INT64_MAX = 2**63 - 1


def checked_count(name: str, shape: tuple[int, ...], datatype: str) -> int:
    """The element count of `shape`, refused (with Triton's words) when it or its byte size
    would not fit an int64."""
    count = element_count(shape)
    if count > _INT64_MAX:
        raise invalid(
            f"input '{name}' shape {list(shape)} causes total element count to exceed maximum "
            f"size of {_INT64_MAX}"
        )
    if count * ELEMENT_SIZE_BY_DATATYPE.get(datatype, 1) > _INT64_MAX:
        raise invalid(f"byte size overflow for input '{name}' of shape {list(shape)}")
    return count


def array_from_bytes(
    name: str,
    buffer: bytes | memoryview,
    datatype: str,
    shape: tuple[int, ...],
    offset: int = 0,
    size: int | None = None,
    model: str = "",
) -> np.ndarray:
    """Decode one tensor from `buffer[offset:offset+size]` (`model` names it in errors)."""
    size = len(buffer) - offset if size is None else size
    count = checked_count(name, shape, datatype)
    if datatype == "BYTES":
        return _deserialize_bytes(name, _where(name, model), buffer, offset, size, count, shape)
    expected = count * ELEMENT_SIZE_BY_DATATYPE[datatype]
    if size != expected:  # Triton's words
        where = _where(name, model).removeprefix("inference ")
        raise invalid(
            f"input byte size mismatch for {where}. Expected "
            f"{expected}, got {size} (shape {list(shape)}, datatype {datatype})"
        )
    # one constructor call, not frombuffer().reshape(): the size was checked above
    return np.ndarray(shape, WIRE_DTYPE_BY_DATATYPE[datatype], buffer, offset)


def _where(name: str, model: str) -> str:
    """The input as error messages name it (`model` empty: the model is not known here)."""
    return f"inference input '{name}' for model '{model}'" if model else f"input '{name}'"


def raw_element_count(name: str, buffer: bytes, datatype: str) -> int:
    """How many elements of fixed-size `datatype` a raw tensor body holds."""
    size = ELEMENT_SIZE_BY_DATATYPE[datatype]
    if len(buffer) % size:
        raise invalid(
            f"input '{name}': raw body of {len(buffer)} bytes is not a whole number of "
            f"{datatype} elements"
        )
    return len(buffer) // size


def _deserialize_bytes(
    name: str,
    where: str,
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
            if position == end:  # Triton's words
                raise invalid(f"expected {count} string elements for {where}, got {index}")
            raise invalid(f"input '{name}': truncated BYTES element length")
        (length,) = unpack(buffer, position)
        position += 4
        stop = position + length
        if stop > end:
            raise invalid(f"input '{name}': BYTES element of {length} bytes runs past the data")
        append(buffer[position:stop])
        position = stop
    if position != end:  # more data than the shape holds: Triton's words for the next element
        if position + 4 > end:
            raise invalid(f"input '{name}': truncated BYTES element length")
        (length,) = unpack(buffer, position)
        if position + 4 + length > end:
            raise invalid(f"input '{name}': BYTES element of {length} bytes runs past the data")
        raise invalid(
            f"unexpected number of string elements {count + 1} for {where}, expecting {count}"
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
    if not isinstance(data, list):
        raise invalid(f"input '{name}': 'data' must be a JSON array")
    count = checked_count(name, shape, datatype)
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(item, str) for item in flat):
            raise invalid(f"input '{name}': BYTES data must be JSON strings")
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = [item.encode() for item in flat]
    else:
        array = _typed_array(name, data, datatype)
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


# The numpy kinds of the JSON values each datatype takes (as Triton: numbers for the numeric
# types, integers only for the integer types, true/false only for BOOL).
_JSON_KINDS_BY_DATATYPE = {"BOOL": "b", "FP32": "iuf", "FP64": "iuf"} | {
    f"{sign}INT{bits}": "iu" for sign in ("", "U") for bits in (8, 16, 32, 64)
}
_JSON_WORDS = {"b": "true or false", "iu": "integers", "iuf": "numbers"}
_INTEGER_LIMITS = {
    name: (
        int(np.iinfo(NUMPY_DTYPE_BY_DATATYPE[name]).min),
        int(np.iinfo(NUMPY_DTYPE_BY_DATATYPE[name]).max),
    )
    for name, kinds in _JSON_KINDS_BY_DATATYPE.items()
    if kinds == "iu"
}


def _typed_array(name: str, data: list[Any], datatype: str) -> np.ndarray:
    """JSON values -> an array of `datatype`, refusing values of another JSON type and
    integers out of the datatype's range (never wrapped)."""
    kinds = _JSON_KINDS_BY_DATATYPE[datatype]
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged or too deep nesting
        _check_depth(data)  # numpy refuses deep nesting too: Triton's message when that is why
        raise invalid(f"input '{name}': data does not match datatype {datatype}: {exc}") from exc
    if values.size and values.dtype.kind not in kinds:
        raise invalid(f"input '{name}': {datatype} data must be JSON {_JSON_WORDS[kinds]}")
    dtype = NUMPY_DTYPE_BY_DATATYPE[datatype]
    if kinds == "iu" and values.size and values.dtype != dtype:  # a narrower integer type
        low, high = _INTEGER_LIMITS[datatype]
        if values.min() < low or values.max() > high:
            raise invalid(f"input '{name}': a value is out of range for datatype {datatype}")
    return values.astype(dtype, copy=False)


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
