"""gzip/deflate request bodies undone in bounded steps: never past a limit, large ones off the
event loop (zlib releases the GIL while it inflates), each step's output reported to the caller
(who counts it against the buffered-bytes budget) before the next one runs.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from server.errors import invalid

WBITS_BY_ENCODING = {"gzip": 31, "deflate": 15}
STEP_BYTES = 4 << 20
# compressed bodies up to this size take their first step on the event loop (about a
# millisecond); larger ones, and every later step, run in a worker thread
INLINE_INPUT_BYTES = 64 << 10


class BoundedInflater:
    """One compressed body, inflated `step()` by `step()` up to `limit` output bytes."""

    def __init__(self, data: bytes, encoding: str, limit: int, flag: str) -> None:
        self._inflater = zlib.decompressobj(WBITS_BY_ENCODING[encoding])
        self._tail = data
        self.encoding = encoding
        self.limit = limit
        self.flag = flag
        self.total = 0
        self.done = False

    def step(self, max_bytes: int = STEP_BYTES) -> bytes:
        """The next piece of output (at most `max_bytes`); sets `done` after the last one."""
        want = min(max_bytes, self.limit + 1 - self.total)
        try:
            piece = self._inflater.decompress(self._tail, want)
        except zlib.error as exc:
            raise invalid(f"request body is not valid {self.encoding} data: {exc}") from None
        self._tail = self._inflater.unconsumed_tail
        self.total += len(piece)
        if self.total > self.limit:
            raise invalid(
                f"Decompressed data size exceeds the maximum allowed value of {self.limit} "
                f"bytes. Use {self.flag} to increase the limit."
            )
        # output shorter than asked with no input left: nothing is pending inside zlib
        self.done = self._inflater.eof or (not self._tail and len(piece) < want)
        return piece


def decompress(data: bytes, encoding: str, limit: int, flag: str) -> bytes:
    """Inflate all of `data` on this thread (never past `limit`)."""
    inflater = BoundedInflater(data, encoding, limit, flag)
    pieces = [inflater.step()]
    while not inflater.done:
        pieces.append(inflater.step())
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def decompress_bounded(
    data: bytes, encoding: str, limit: int, flag: str, on_piece: Callable[[int], None]
) -> bytes:
    """Inflate `data` step by step, off the loop unless it is small; `on_piece(size)` runs on
    the loop before each next step and may raise to stop it."""
    inflater = BoundedInflater(data, encoding, limit, flag)
    if len(data) <= INLINE_INPUT_BYTES:
        piece = inflater.step()
    else:
        piece = await asyncio.to_thread(inflater.step)
    on_piece(len(piece))
    pieces = [piece]
    while not inflater.done:
        piece = await asyncio.to_thread(inflater.step)
        on_piece(len(piece))
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
