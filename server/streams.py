"""ResponseStream: the responses of one request to a decoupled model, as the runtime produces
them. The runtime puts (on the event loop), the data plane iterates; the stream ends after the
item marked final. A response is the request's outputs (name -> array) with its parameters, or a
ServingError (a failed response; the stream goes on unless it was final), or None (the model
closed the stream without a response: the FINAL flag alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import ServingError


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """One response of a decoupled model."""

    outputs: Mapping[str, np.ndarray] | None  # None: a final flag without a response
    final: bool
    error: ServingError | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


class ResponseStream:
    """An ordered, single-consumer stream of StreamedResponse items."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[StreamedResponse] = asyncio.Queue()
        self._finished = asyncio.Event()

    def put(self, item: StreamedResponse) -> None:
        """Append a response (ignored once the final one is in)."""
        if self._finished.is_set():
            return
        if item.final:
            self._finished.set()
        self._items.put_nowait(item)

    @property
    def finished(self) -> bool:
        """The final response is in."""
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        """Until the final response is in."""
        await self._finished.wait()

    def fail(self, error: ServingError) -> None:
        """End the stream with an error (the instance died, the server is stopping)."""
        self.put(StreamedResponse(None, True, error))

    async def __aiter__(self) -> AsyncIterator[StreamedResponse]:
        while True:
            item = await self._items.get()
            yield item
            if item.final:
                return
