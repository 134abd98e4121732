"""The wire between ferry and a Python model's process: framed messages over a Unix socket, with
tensor data beside the message, never inside it.

A message is a small tuple pickled with protocol 5; numpy arrays in it leave their data out of
band (a reducer that records their memory), so the pickle holds only names, dtypes and shapes,
and the receiver's arrays are writable views on memory it owns. The data travels in
the same frame when it is small (a socket copy is cheaper than mapping memory) and in a POSIX
shared memory segment when it is large: the sender writes the segment once, the receiver maps it,
unlinks it at once and builds its arrays as views on the mapping (no copy, no pickling). A
segment whose receiver died before unlinking it is swept by the parent by its name prefix.

Frame: PREFIX (total bytes after the prefix, pickle bytes, buffer count, mode), the buffer sizes,
the pickle, then either the buffers (INLINE) or the segment's name (SHARED).

This module is imported by the model process too: it imports nothing of ferry.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = struct.Struct("<QIIB")
INLINE, SHARED = 0, 1
INLINE_MAX_BYTES = 64 * 1024  # data above this goes through shared memory
MAX_FRAME_BYTES = 1 << 40  # a corrupt prefix must not make the reader allocate without bound
SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())

_segments = itertools.count()


class ChannelClosed(ConnectionError):
    """The other side of the channel went away."""


class _Pickler(pickle.Pickler):
    """Pickles numeric arrays as (buffer index, dtype, shape); their memory goes out of band."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.arrays: list[np.ndarray] = []

    def reducer_override(self, obj: Any) -> Any:
        # called once per array of every message (32 arrays for a batch of 32): keep it lean
        # (`dtype.str` builds its string each time, `flags` an object: both cost more than the
        # dict lookup and the call that stand in for them)
        if type(obj) is not np.ndarray:
            return NotImplemented
        code = _DTYPE_CODES.get(obj.dtype)
        if code is None:
            if obj.dtype.hasobject:
                return NotImplemented
            code = obj.dtype.str
            if len(_DTYPE_CODES) < 256:
                _DTYPE_CODES[obj.dtype] = code
        obj = np.ascontiguousarray(obj)  # itself when contiguous; a 0-d array becomes shape (1,)
        arrays = self.arrays
        arrays.append(obj)
        return _rebuild_array, (len(arrays) - 1, code, obj.shape)


_DTYPE_CODES: dict[np.dtype[Any], str] = {}  # dtype -> its `str`, for the arrays seen so far


_decoding = threading.local()  # (source, offsets) of the frame being unpickled on this thread
_DTYPES: dict[str, np.dtype[Any]] = {}


def _rebuild_array(index: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    source, offsets = _decoding.frame
    start = offsets[index]
    dt = _DTYPES.get(dtype)
    if dt is None:
        dt = _DTYPES.setdefault(dtype, np.dtype(dtype))
    array = np.ndarray(shape, dt, source, start)
    if array.nbytes != offsets[index + 1] - start:
        raise ChannelClosed(f"array {index} of the frame does not match its buffer size")
    return array


def encode(message: Any, shm_prefix: str) -> list[Any]:
    """One frame as a list of chunks: the prefix, the buffer sizes, the pickle, then the arrays
    (INLINE: bytes-like, not copied; `to_write` makes them writable) or the segment's name."""
    stream = io.BytesIO()
    pickler = _Pickler(stream)
    pickler.dump(message)
    body = stream.getvalue()
    arrays = pickler.arrays
    sizes = [array.nbytes for array in arrays]
    data_bytes = sum(sizes)
    sizes_blob = struct.pack(f"<{len(sizes)}Q", *sizes)
    if data_bytes <= INLINE_MAX_BYTES:
        total = len(sizes_blob) + len(body) + data_bytes
        prefix = PREFIX.pack(total, len(body), len(arrays), INLINE)
        return [prefix, sizes_blob, body, *arrays]
    name = write_segment([_bytes_of(array) for array in arrays], data_bytes, shm_prefix)
    total = len(sizes_blob) + len(body) + len(name)
    return [PREFIX.pack(total, len(body), len(arrays), SHARED), sizes_blob, body, name]


def _bytes_of(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def to_write(chunks: list[Any]) -> list[bytes | memoryview]:
    """A frame's chunks for a socket: one joined write when small (a long scatter list costs
    more than the copy), else the chunks with the arrays as byte views."""
    if PREFIX.unpack_from(chunks[0])[0] <= 2 * INLINE_MAX_BYTES:
        return [b"".join(chunks)]
    return [c if isinstance(c, (bytes, memoryview)) else _bytes_of(c) for c in chunks]


def send_frame(sock: Any, chunks: list[Any]) -> None:
    """Write one frame (`encode`'s chunks) to a blocking socket."""
    for data in to_write(chunks):
        sock.sendall(data)


def write_segment(views: list[memoryview], data_bytes: int, shm_prefix: str) -> bytes:
    """Copy the buffers into a new shared memory segment; returns its name."""
    name = f"{shm_prefix}-{os.getpid()}-{next(_segments)}"
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, data_bytes)
        with mmap.mmap(fd, data_bytes) as mapping:
            offset = 0
            for view in views:
                mapping[offset : offset + view.nbytes] = view
                offset += view.nbytes
    finally:
        os.close(fd)
    return name.encode()


def decode(header: tuple[int, int, int], frame: bytearray | memoryview) -> Any:
    """The message of one frame (`header`: the prefix's pickle bytes, buffer count and mode)."""
    body_bytes, count, mode = header
    view = memoryview(frame)
    sizes = struct.unpack_from(f"<{count}Q", view)
    start = 8 * count
    body = view[start : start + body_bytes]
    if mode == INLINE:
        source, base = view, start + body_bytes
        if base + sum(sizes) != len(view):
            raise ChannelClosed("the frame's buffer sizes do not match its length")
    else:
        source, base = _map_segment(bytes(view[start + body_bytes :]).decode(), sum(sizes)), 0
    _decoding.frame = (source, list(itertools.accumulate(sizes, initial=base)))
    try:
        return pickle.loads(body)
    finally:
        _decoding.frame = None


def _map_segment(name: str, size: int) -> memoryview:
    """Map a segment the other side wrote and unlink it: the mapping lives while arrays use it."""
    path = SHM_DIR / name
    if "/" in name or not name:
        raise ChannelClosed(f"bad shared memory segment name {name!r}")
    fd = os.open(path, os.O_RDWR)
    try:
        mapping = mmap.mmap(fd, size) if size else None
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return memoryview(mapping) if mapping is not None else memoryview(b"")


def sweep_segments(shm_prefix: str) -> None:
    """Remove segments left behind by a process that died before their receiver mapped them."""
    for path in SHM_DIR.glob(f"{shm_prefix}-*"):
        path.unlink(missing_ok=True)


class FrameReader:
    """Splits a byte stream into frames (the parent's asyncio protocol feeds it)."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self._buffer = bytearray()
        self._on_message = on_message

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= PREFIX.size:
            total, body_bytes, count, mode = PREFIX.unpack_from(buffer)
            if total > MAX_FRAME_BYTES:
                raise ChannelClosed(f"frame of {total} bytes is over the limit")
            end = PREFIX.size + total
            if len(buffer) < end:
                return
            frame = buffer[PREFIX.size : end]  # its own copy: arrays may keep views on it
            del buffer[:end]
            self._on_message(decode((body_bytes, count, mode), frame))


def read_messages(read_into: Callable[[memoryview], int]) -> Iterator[Any]:
    """Blocking frame reader for the model process (`read_into`: socket.recv_into)."""

    def read_exact(size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            n = read_into(view[got:])
            if n == 0:
                raise ChannelClosed("the server closed the channel")
            got += n
        return data

    while True:
        total, body_bytes, count, mode = PREFIX.unpack(read_exact(PREFIX.size))
        if total > MAX_FRAME_BYTES:
            raise ChannelClosed(f"frame of {total} bytes is over the limit")
        yield decode((body_bytes, count, mode), read_exact(total))


# --- message tags (tuples: (TAG, ...)) ---------------------------------------------------------
# server -> model process
INIT = "init"  # (INIT, settings dict): the first message; the process answers READY or FAILED
EXECUTE = "execute"  # (EXECUTE, batch_id, [request payload, ...])
CALL_RESULT = "call_result"  # (CALL_RESULT, call_id, result) answers a CALL
CALL_STREAM = "call_stream"  # (CALL_STREAM, call_id, response payload | None, final)
FINALIZE = "finalize"  # (FINALIZE,); the process also sends it to the workers attached to it
# model process -> server
READY = "ready"  # (READY,) initialize returned
FAILED = "failed"  # (FAILED, message) initialize raised
EXECUTED = "executed"  # (EXECUTED, batch_id, [response payload | None, ...] | error message)
RESPONSE = "response"  # (RESPONSE, batch_id, index, response payload | None, flags)
CALL = "call"  # (CALL, call_id, kind, payload): BLS and model control from the model
FINALIZED = "finalized"  # (FINALIZED, error message or "")

# request payload: (request_id, correlation_id, [(name, array)], [requested output names],
#                   parameters JSON, flags)
# response payload: ([(name, array)], (error code name, message) | None, parameters JSON)
