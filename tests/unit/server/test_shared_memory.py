"""SharedMemoryManager on real POSIX shared memory created by tritonclient's utilities."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from server.errors import ErrorKind, ServingError
from server.shared_memory import (
    SharedMemoryManager,
    SharedMemoryReference,
    shared_memory_reference,
)
from tests.support.shared_memory import client_region, shm


@pytest.fixture
def manager() -> SharedMemoryManager:
    return SharedMemoryManager()


def test_register_status_read_write_unregister(manager: SharedMemoryManager) -> None:
    x = np.arange(4, dtype=np.float32)
    with client_region(64) as region:
        shm.set_shared_memory_region(region.handle, [x])
        manager.register("in", region.key, 0, 64)
        manager.register("out", region.key, 32, 32)  # two regions over one object
        assert manager.status() == [
            {"name": "in", "key": region.key, "offset": 0, "byte_size": 64},
            {"name": "out", "key": region.key, "offset": 32, "byte_size": 32},
        ]
        assert manager.status("out") == [manager.status()[1]]

        data = manager.read(SharedMemoryReference("in", 16))
        assert np.frombuffer(data, np.float32).tolist() == x.tolist()
        y = np.array([7, 8], dtype=np.int64)
        manager.write(SharedMemoryReference("out", 16, offset=8), "y", y.tobytes())
        # "out" starts 32 bytes into the object, so the client sees y at 32 + 8
        assert shm.get_contents_as_numpy(region.handle, np.int64, [2], 40).tolist() == [7, 8]

        manager.unregister("in")
        assert [r["name"] for r in manager.status()] == ["out"]
        manager.unregister("never_registered")  # fine, as in Triton
        manager.unregister()
        assert manager.status() == []
        manager.register("in", region.key, 0, 64)  # the name is free again
        manager.close()
        assert manager.status() == []


def test_reads_are_copies(manager: SharedMemoryManager) -> None:
    with client_region(16) as region:
        shm.set_shared_memory_region(region.handle, [np.ones(4, np.float32)])
        manager.register("r", region.key, 0, 16)
        data = manager.read(SharedMemoryReference("r", 16))
        shm.set_shared_memory_region(region.handle, [np.zeros(4, np.float32)])
        assert np.frombuffer(data, np.float32).tolist() == [1.0] * 4  # the client reused it
        manager.unregister()


def test_offsets_need_not_be_page_aligned(manager: SharedMemoryManager) -> None:
    size = 2 * mmap.ALLOCATIONGRANULARITY + 64
    offset = mmap.ALLOCATIONGRANULARITY + 12
    with client_region(size) as region:
        z = np.arange(5, dtype=np.int32)
        shm.set_shared_memory_region(region.handle, [z], offset=offset + 4)
        manager.register("r", region.key, offset, 64)
        assert (
            np.frombuffer(manager.read(SharedMemoryReference("r", 20, offset=4)), np.int32).tolist()
            == z.tolist()
        )
        manager.unregister()


def test_registration_errors(manager: SharedMemoryManager) -> None:
    with client_region(64) as region:
        manager.register("r", region.key, 0, 64)
        with pytest.raises(ServingError) as duplicate:
            manager.register("r", region.key, 0, 16)
        assert duplicate.value.kind == ErrorKind.ALREADY_EXISTS
        assert duplicate.value.message == "shared memory region 'r' already in manager"

        for offset, byte_size in ((0, 65), (60, 8), (64, 1)):
            with pytest.raises(ServingError, match="exceeds the 64 bytes") as too_big:
                manager.register("big", region.key, offset, byte_size)
            assert too_big.value.kind == ErrorKind.INVALID_ARG
        with pytest.raises(ServingError, match="greater than 0"):
            manager.register("empty", region.key, 0, 0)
        with pytest.raises(ServingError, match="'region name' is necessary"):
            manager.register("", region.key, 0, 8)
        assert [r["name"] for r in manager.status()] == ["r"]
        manager.unregister()

    with pytest.raises(ServingError, match="Unable to open shared memory region") as missing:
        manager.register("gone", region.key, 0, 8)  # the client destroyed it above
    assert missing.value.kind == ErrorKind.INVALID_ARG
    for key in ("", "/", "///"):  # Triton's words
        with pytest.raises(ServingError, match=f"invalid shm key '{key}'"):
            manager.register("bad", key, 0, 8)
    for key in ("triton_python_backend_shm_region_x", "//triton_python_backend_shm_region_"):
        with pytest.raises(ServingError, match="contains the reserved prefix"):
            manager.register("bad", key, 0, 8)
    for key in ("/a/b", "/..", "../etc/passwd"):
        with pytest.raises(ServingError, match="invalid shared memory key"):
            manager.register("bad", key, 0, 8)


def test_status_of_an_unknown_region_is_not_found(manager: SharedMemoryManager) -> None:
    with pytest.raises(ServingError) as unknown:
        manager.status("nope")
    assert unknown.value.kind == ErrorKind.NOT_FOUND
    assert "Unable to find system shared memory region: 'nope'" in unknown.value.message


def test_use_errors(manager: SharedMemoryManager) -> None:
    with client_region(32) as region:
        manager.register("r", region.key, 0, 32)
        with pytest.raises(ServingError, match="Unable to find shared memory region: 'x'"):
            manager.read(SharedMemoryReference("x", 4))
        with pytest.raises(ServingError, match="Invalid offset \\+ byte size"):
            manager.read(SharedMemoryReference("r", 16, offset=20))
        with pytest.raises(ServingError, match="Invalid offset \\+ byte size"):
            manager.check(SharedMemoryReference("r", 33))
        with pytest.raises(ServingError, match=r"output 'y' \(8 bytes\) should be at least 12"):
            manager.write(SharedMemoryReference("r", 8), "y", b"\x00" * 12)
        manager.unregister("r")
        with pytest.raises(ServingError, match="Unable to find shared memory region: 'r'") as gone:
            manager.write(SharedMemoryReference("r", 8), "y", b"\x00" * 8)
        assert gone.value.kind == ErrorKind.NOT_FOUND  # Triton's 404 / NOT_FOUND


def test_a_region_outlives_the_clients_unlink(manager: SharedMemoryManager) -> None:
    with client_region(8) as region:
        shm.set_shared_memory_region(region.handle, [np.array([5, 6], np.int32)])
        manager.register("r", region.key, 0, 8)
    # POSIX: the mapping stays valid after shm_unlink
    assert np.frombuffer(manager.read(SharedMemoryReference("r", 8)), np.int32).tolist() == [5, 6]
    manager.close()


def test_reference_parameters_are_validated() -> None:
    assert shared_memory_reference("t", "r", 8) == SharedMemoryReference("r", 8, 0)
    assert shared_memory_reference("t", "r", 8, 4) == SharedMemoryReference("r", 8, 4)
    # as Triton's HTTP endpoint: no size is size 0, refused later by the size check that
    # names the bytes expected (gRPC requires the parameter, in its codec)
    assert shared_memory_reference("t", "r", None) == SharedMemoryReference("r", 0, 0)
    for region, byte_size, offset in (
        (7, 8, 0),
        ("", 8, 0),
        ("r", -1, 0),
        ("r", 8, -2),
        ("r", True, 0),
        ("r", 8, 1.5),
        ("r", "8", 0),
    ):
        with pytest.raises(ServingError, match="invalid value for 'shared_memory_"):
            shared_memory_reference("t", region, byte_size, offset)


def test_a_held_region_outlives_its_unregister(manager: SharedMemoryManager) -> None:
    """As in Triton: a region a request uses stays registered until the request is done."""
    with client_region(8) as region:
        manager.register("r", region.key, 0, 8)
        with manager.hold():
            manager.check(SharedMemoryReference("r", 8))  # the request names the region
            manager.unregister()
            assert [r["name"] for r in manager.status()] == ["r"]
            with pytest.raises(ServingError, match="already in manager"):
                manager.register("r", region.key, 0, 8)
            manager.write(SharedMemoryReference("r", 8), "y", b"\x01" * 8)  # still mapped
        assert manager.status() == []
        with pytest.raises(ServingError, match="Unable to find shared memory region: 'r'"):
            manager.read(SharedMemoryReference("r", 8))
        manager.register("r", region.key, 0, 8)  # the name is free again
        with manager.hold():
            manager.read(SharedMemoryReference("r", 8))
        assert [r["name"] for r in manager.status()] == ["r"]  # not unregistered: kept
