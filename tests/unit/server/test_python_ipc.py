"""The model-process wire: frames round-trip, array data stays out of the pickle (inline when
small, shared memory when large), received arrays are writable, segments never outlive a frame."""

from __future__ import annotations

import pickle
import socket
import struct
import uuid

import numpy as np
import pytest

from server.runtimes.python import ipc


def frame_bytes(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


def round_trip(message: object, prefix: str) -> object:
    received: list[object] = []
    reader = ipc.FrameReader(received.append)
    data = frame_bytes(ipc.encode(message, prefix))
    for start in range(0, len(data), 1000):  # arrives in pieces, like a socket's reads
        reader.feed(data[start : start + 1000])
    assert len(received) == 1
    return received[0]


@pytest.fixture
def prefix() -> str:
    name = f"ferry-test-{uuid.uuid4().hex[:8]}"
    yield name
    ipc.sweep_segments(name)


def test_small_arrays_travel_inline_outside_the_pickle(prefix: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    chunks = ipc.encode(("execute", 1, [("X", x)]), prefix)
    _, _, count, mode = ipc.PREFIX.unpack(bytes(chunks[0]))
    assert (count, mode) == (1, ipc.INLINE)
    assert x.tobytes() not in bytes(chunks[2])  # the pickle holds no array data
    _, _, [(_, y)] = round_trip(("execute", 1, [("X", x)]), prefix)  # type: ignore[misc]
    np.testing.assert_array_equal(y, x)
    assert y.dtype == np.float32 and y.flags.writeable


def test_large_arrays_travel_by_shared_memory_and_the_segment_is_unlinked(prefix: str) -> None:
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float64)  # 2 MiB
    readonly = np.frombuffer(x.tobytes(), dtype=np.float64).reshape(x.shape)  # like a request
    chunks = ipc.encode({"big": readonly, "small": np.int64(3)}, prefix)
    _, _, count, mode = ipc.PREFIX.unpack(bytes(chunks[0]))
    assert (count, mode) == (1, ipc.SHARED)
    assert len(list(ipc.SHM_DIR.glob(f"{prefix}-*"))) == 1
    received: list[object] = []
    ipc.FrameReader(received.append).feed(frame_bytes(chunks))
    message = received[0]
    assert isinstance(message, dict)
    np.testing.assert_array_equal(message["big"], x)
    assert message["big"].flags.writeable  # the receiver owns a private mapping
    assert not list(ipc.SHM_DIR.glob(f"{prefix}-*"))  # unlinked as soon as it was mapped


def test_object_non_contiguous_empty_0d_and_byte_ordered_arrays_round_trip(prefix: str) -> None:
    text = np.array([[b"a", b"bc"], [b"", b"\xff"]], dtype=np.object_)
    strided = np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]
    empty = np.zeros((0, 3), np.float16)
    big_endian = np.arange(3, dtype=">i4")
    little_endian = np.arange(3, dtype="<i4")
    scalar = np.array(2.5, np.float32)
    record = np.array([(1, b"x")], dtype=[("n", "<i2"), ("s", "O")])
    out = round_trip(
        [text, strided, empty, None, "x", big_endian, little_endian, scalar, record], prefix
    )
    assert isinstance(out, list)
    assert out[0].tolist() == text.tolist()
    np.testing.assert_array_equal(out[1], strided)
    assert out[2].shape == (0, 3) and out[2].dtype == np.float16
    assert out[3:5] == [None, "x"]
    assert out[5].dtype.str == ">i4" and out[5].tolist() == [0, 1, 2]
    assert out[6].dtype.str == "<i4" and out[6].tolist() == [0, 1, 2]
    assert out[7].shape == (1,) and out[7].tolist() == [2.5]  # a 0-d array travels as (1,)
    assert out[8].tolist() == record.tolist()  # a dtype holding objects is pickled in band


def test_a_blocking_reader_reads_frames_from_a_socket(prefix: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        for i in range(3):
            left.sendmsg(ipc.encode(("msg", i, np.full(5, i)), prefix))
        left.close()
        messages = list(_take(ipc.read_messages(right.recv_into), 3))
        assert [m[1] for m in messages] == [0, 1, 2]
        with pytest.raises(ipc.ChannelClosed):
            next(ipc.read_messages(right.recv_into))


def _take(iterator: object, count: int) -> list[object]:
    return [next(iterator) for _ in range(count)]  # type: ignore[call-overload]


def test_a_frame_over_the_limit_closes_the_channel() -> None:
    reader = ipc.FrameReader(lambda message: None)
    with pytest.raises(ipc.ChannelClosed):
        reader.feed(ipc.PREFIX.pack(ipc.MAX_FRAME_BYTES + 1, 0, 0, ipc.INLINE))


def test_sweep_removes_segments_a_dead_process_left(prefix: str) -> None:
    ipc.write_segment([memoryview(b"abc")], 3, prefix)
    assert list(ipc.SHM_DIR.glob(f"{prefix}-*"))
    ipc.sweep_segments(prefix)
    assert not list(ipc.SHM_DIR.glob(f"{prefix}-*"))


def test_messages_are_plain_pickles_apart_from_the_array_data(prefix: str) -> None:
    chunks = ipc.encode(("ready",), prefix)
    assert ipc.PREFIX.unpack(bytes(chunks[0]))[2] == 0  # no out-of-band buffers
    assert pickle.loads(bytes(chunks[2])) == ("ready",)


def test_an_array_that_does_not_match_its_buffer_size_is_refused(prefix: str) -> None:
    chunks = ipc.encode(("x", np.zeros(16, np.float32), np.zeros(1, np.float32)), prefix)
    swapped = struct.pack("<2Q", 4, 64)  # the sizes of the two buffers, swapped: same total
    assert chunks[1] == struct.pack("<2Q", 64, 4)
    reader = ipc.FrameReader(lambda message: None)
    with pytest.raises(ipc.ChannelClosed):
        reader.feed(frame_bytes([chunks[0], swapped, *chunks[2:]]))
