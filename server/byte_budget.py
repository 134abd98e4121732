"""One process's part of a server-wide byte budget (`--http-max-buffered-bytes`,
`--grpc-max-buffered-request-bytes`).

A single process holds the whole budget. Under `ferry serve --workers N` the budget stays the
server's: its bytes are a pool that the workers share (`server/workers/byte_pool.py`), and each
worker leases from it what its requests hold, one chunk ahead, so that most requests take no lock.
When a worker's requests end and it holds more than two chunks it does not use, it gives back
all of them but one. So one request may use the whole budget whichever worker receives it, and
the server refuses only when the bytes its workers hold, plus at most two idle chunks on each of
the other workers, would pass the limit.
"""

from __future__ import annotations

from typing import Protocol

CHUNK_BYTES = 1 << 20  # the most a worker leases ahead of its requests
CHUNKS_PER_WORKER = 16  # ...and at most this fraction of a worker's fair share of a small budget


class LeasePool(Protocol):
    """The budget's bytes that every worker leases from (server/workers/byte_pool.py)."""

    workers: int  # how many workers share it

    def lease(self, size: int) -> bool:
        """Lease `size` more bytes to this worker; False, leasing nothing, when the server's
        leases would pass the budget."""
        ...

    def give_back(self, size: int) -> None:
        """Return `size` leased bytes."""
        ...

    def leased(self) -> int:
        """The bytes every worker holds leased now (for messages)."""
        ...


class Allowance:
    """What this process may hold of a budget of `capacity` bytes: all of it when it serves
    alone (no pool), else the bytes it has leased from `pool`.

    The budgets built on it (server/protocol/http_limits.py, server/protocol/grpc_wire/limits.py)
    compare what they hold with `granted` on the hot path, call `widen` only when a request
    would pass it, and `narrow` only when more than `spare_limit` is idle; alone, `spare_limit`
    is the capacity, which idle bytes never pass.
    """

    __slots__ = ("capacity", "chunk", "granted", "pool", "spare_limit")

    def __init__(self, capacity: int, pool: LeasePool | None = None) -> None:
        self.capacity = capacity
        self.pool = pool
        if pool is None:
            self.granted, self.chunk, self.spare_limit = capacity, 0, capacity
        else:
            self.chunk = max(1, min(CHUNK_BYTES, capacity // (CHUNKS_PER_WORKER * pool.workers)))
            self.granted, self.spare_limit = 0, 2 * self.chunk

    def widen(self, held: int) -> bool:
        """Lease enough to hold `held` bytes (more than `granted`), a chunk ahead where the budget
        has room for it; False when the server's budget has no room for `held`."""
        pool = self.pool
        if pool is None:
            return False
        need = held - self.granted
        if pool.lease(need + self.chunk):
            self.granted += need + self.chunk
            return True
        if pool.lease(need):
            self.granted += need
            return True
        return False

    def narrow(self, held: int) -> None:
        """Give back what is idle past one chunk. Called only once `granted - held` passed
        `spare_limit`, which takes a pool (alone, idle bytes never pass it)."""
        assert self.pool is not None
        surplus = self.granted - held - self.chunk
        self.granted -= surplus
        self.pool.give_back(surplus)

    def server_held(self, held: int) -> int:
        """The bytes the server holds, for messages: `held` alone, else every worker's leases."""
        return held if self.pool is None else self.pool.leased()
