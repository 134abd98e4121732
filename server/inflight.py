"""Admission for a scheduler that queues nothing itself (an ensemble, a model another worker
runs): count the requests it is running, refuse new ones once it drains, and let `drain` wait
for the ones it took."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from server.errors import ErrorKind, ServingError


class InFlight:
    """Requests running in one scheduler, and whether it still takes new ones."""

    def __init__(self) -> None:
        self.accepting = True
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Run one request inside; UNAVAILABLE once draining (as Triton answers a model being
        unloaded)."""
        if not self.accepting:
            raise ServingError(ErrorKind.UNAVAILABLE, "model is shutting down")
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()

    async def drain(self) -> None:
        """Take no more requests; wait for the ones running."""
        self.accepting = False
        await self._idle.wait()
