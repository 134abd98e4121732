"""A server-wide byte budget shared by the workers of `ferry serve --workers N` (the
`LeasePool` of server/byte_budget.py, which says how a worker leases from it).

One file per budget in the supervisor's folder holds, per worker slot, the bytes that worker has
leased; a lease is granted under an exclusive `flock` of that file when the sum of every slot
stays within the capacity. A worker that dies holds its flock no longer (the kernel drops it with
the descriptor) and its slot is zeroed by the worker that replaces it, which starts only after it
has exited: its requests are gone with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from server.workers.mapped_file import LockedIntegers, map_integers


class SharedBytePool:
    """`capacity` bytes leased by `workers` workers; this process is worker `slot`."""

    def __init__(self, folder: Path, name: str, workers: int, slot: int, capacity: int) -> None:
        self.capacity, self.slot, self.workers = capacity, slot, workers
        self._leases = LockedIntegers(folder / f"budget-{name}", workers)
        with self._leases.locked() as leases:
            leases[slot] = 0  # a replaced worker's requests died with it

    def lease(self, size: int) -> bool:
        with self._leases.locked() as leases:
            if sum(leases) + size > self.capacity:
                return False
            leases[self.slot] += size
            return True

    def give_back(self, size: int) -> None:
        with self._leases.locked() as leases:
            leases[self.slot] -= size

    def leased(self) -> int:
        return sum(self._leases.values)  # unlocked: a message's figure, each slot read whole

    def close(self) -> None:
        self._leases.close()


class SharedCachePool(SharedBytePool):
    """The response cache's bytes (`--cache-config local,size=`) leased by the workers, with a
    claim per worker: the bytes a worker under its fair share could not lease, which asks the
    workers above their share to give theirs back (server/response_cache.py). Each worker writes
    its own claim only, so a claim needs no lock; a replaced worker's claim is zeroed."""

    def __init__(self, folder: Path, workers: int, slot: int, capacity: int) -> None:
        super().__init__(folder, "cache", workers, slot, capacity)
        self._others = [other for other in range(workers) if other != slot]
        descriptor = os.open(folder / "budget-cache-claims", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._claims_map, self._claims = map_integers(descriptor, workers)
        finally:
            os.close(descriptor)
        self._claims[slot] = 0

    def claim(self, size: int) -> None:
        self._claims[self.slot] = size

    def claimed_by_others(self) -> bool:
        claims = self._claims
        return any(claims[other] for other in self._others)

    def close(self) -> None:
        self._claims.release()
        self._claims_map.close()
        super().close()
