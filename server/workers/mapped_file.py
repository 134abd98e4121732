"""A file of 64-bit integers that the supervisor and its workers map together (the connection
counts of handoff.py; under a file lock, the sampling table of sampling_table.py and the byte
pools of byte_pool.py)."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def map_integers(descriptor: int, count: int) -> tuple[mmap.mmap, memoryview]:
    """Map `count` signed 64-bit integers of the open file `descriptor`, sizing the file first
    if it is shorter (the first process to open it; new bytes read as zeros): the map, and a
    view of it as integers (release the view before closing the map)."""
    size = count * 8
    if os.fstat(descriptor).st_size < size:
        os.ftruncate(descriptor, size)
    mapping = mmap.mmap(descriptor, size)
    return mapping, memoryview(mapping).cast("q")


class LockedIntegers:
    """`count` 64-bit integers of the file at `path` (created zeroed by the first to open it),
    mapped, and changed under an exclusive `flock` of that file (the sampling table of
    sampling_table.py, the byte pools of byte_pool.py). The descriptor stays open: the lock is
    an flock of it, which the threads of one process share, so a thread lock keeps them apart
    too. A process that dies holding the lock holds it no longer (the kernel drops it)."""

    def __init__(self, path: Path, count: int) -> None:
        self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._map, self.values = map_integers(self._descriptor, count)
        except BaseException:
            os.close(self._descriptor)
            raise
        self._threads = threading.Lock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[memoryview]:
        """The integers, held under the lock for the `with` block."""
        with self._threads:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
            try:
                yield self.values
            finally:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        self.values.release()
        self._map.close()
        os.close(self._descriptor)
