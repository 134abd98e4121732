"""A server-wide byte budget shared by the workers of `ferry serve --workers N` (the
`LeasePool` of server/byte_budget.py, which says how a worker leases from it).

One file per budget in the supervisor's folder holds, per worker slot, the bytes that worker has
leased; a lease is granted under an exclusive `flock` of that file when the sum of every slot
stays within the capacity. A worker that dies holds its flock no longer (the kernel drops it with
the descriptor) and its slot is zeroed by the worker that replaces it, which starts only after it
has exited: its requests are gone with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from server.workers.mapped_file import map_integers


def pool_path(folder: Path, name: str) -> Path:
    return folder / f"budget-{name}"


class SharedBytePool:
    """`capacity` bytes leased by `workers` workers; this process is worker `slot`."""

    def __init__(self, folder: Path, name: str, workers: int, slot: int, capacity: int) -> None:
        self.capacity, self.slot, self.workers = capacity, slot, workers
        # kept open: the lock is an flock of this descriptor
        self._descriptor = os.open(pool_path(folder, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._map, self._leases = map_integers(self._descriptor, workers)
        except BaseException:
            os.close(self._descriptor)
            raise
        # threads of one process share the descriptor's flock: this lock keeps them apart
        # (gRPC inflates large messages on threads that lease too)
        self._threads = threading.Lock()
        with self._locked() as leases:
            leases[slot] = 0  # a replaced worker's requests died with it

    @contextlib.contextmanager
    def _locked(self) -> Iterator[memoryview]:
        with self._threads:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
            try:
                yield self._leases
            finally:
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)

    def lease(self, size: int) -> bool:
        with self._locked() as leases:
            if sum(leases) + size > self.capacity:
                return False
            leases[self.slot] += size
            return True

    def give_back(self, size: int) -> None:
        with self._locked() as leases:
            leases[self.slot] -= size

    def leased(self) -> int:
        return sum(self._leases)  # unlocked: a message's figure, each slot read whole

    def close(self) -> None:
        self._leases.release()
        self._map.close()
        os.close(self._descriptor)
