"""gRPC message framing (a flag byte, a 4-byte length, the message) and bounded inflation of
compressed messages: output stops at the size limit and is charged to the request budget as it
grows, so a small gzip bomb can neither fill memory nor hold the event loop."""

from __future__ import annotations

import threading
import zlib

from server.protocol.grpc_wire.limits import RequestBudget
from server.protocol.grpc_wire.rpc import INTERNAL, RESOURCE_EXHAUSTED, UNIMPLEMENTED, AbortError

PREFIX_BYTES = 5
INFLATE_STEP_BYTES = 1 << 20  # inflated per step; a message needing more steps leaves the loop
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def too_large(size: int, limit: int) -> AbortError:
    return AbortError(RESOURCE_EXHAUSTED, f"received message larger than max ({size} vs. {limit})")


def split_messages(buffer: bytearray, max_bytes: int) -> list[tuple[int, bytes]]:
    """Take every complete length-prefixed message off the front of `buffer`; a declared length
    over `max_bytes` is refused as soon as its prefix is in."""
    messages = []
    offset = 0
    while len(buffer) - offset >= PREFIX_BYTES:
        length = int.from_bytes(buffer[offset + 1 : offset + PREFIX_BYTES], "big")
        if length > max_bytes:
            raise too_large(length, max_bytes)
        end = offset + PREFIX_BYTES + length
        if len(buffer) < end:
            break
        with memoryview(buffer) as view:  # one copy, not two
            messages.append((buffer[offset], bytes(view[offset + PREFIX_BYTES : end])))
        offset = end
    del buffer[:offset]
    return messages


class Inflation:
    """One compressed message being inflated, charging `budget` for every byte it produces.

    `step` runs on the event loop (one bounded slice); `finish` runs the rest, on a worker thread
    for large messages. `release` gives the charge back; `abandon` is for a call cancelled while a
    thread still inflates (the thread then releases what it charged when it stops).
    """

    def __init__(
        self,
        payload: bytes | bytearray | memoryview,
        encoding: str,
        limit: int,
        budget: RequestBudget,
    ) -> None:
        wbits = _WBITS.get(encoding)
        if wbits is None:
            if encoding in ("", "identity"):
                raise AbortError(INTERNAL, "compressed message flag set without a grpc-encoding")
            raise AbortError(
                UNIMPLEMENTED,
                f"grpc-encoding '{encoding}' is not supported (identity, deflate, gzip are)",
            )
        self._inflater = zlib.decompressobj(wbits)
        self._input = payload
        self._encoding = encoding
        self._limit, self._budget = limit, budget
        self._lock = threading.Lock()
        self._abandoned = self._running = False
        self.output = bytearray()
        self.charged = 0

    def step(self) -> bool:
        """Inflate up to INFLATE_STEP_BYTES more; True once the message is whole."""
        if self._abandoned:
            raise AbortError(INTERNAL, "inflation abandoned")
        try:
            chunk = self._inflater.decompress(self._input, INFLATE_STEP_BYTES)
        except zlib.error as exc:
            raise AbortError(
                INTERNAL, f"cannot decompress the {self._encoding} message: {exc}"
            ) from None
        self._input = self._inflater.unconsumed_tail
        if chunk:
            size = len(self.output) + len(chunk)
            if size > self._limit:
                raise too_large(size, self._limit)
            if not self._budget.try_charge_inflating(len(chunk)):
                raise AbortError(RESOURCE_EXHAUSTED, self._budget.exhausted_message())
            self.charged += len(chunk)
            self.output += chunk
        if self._inflater.eof:
            if self._inflater.unused_data:
                raise AbortError(INTERNAL, f"trailing bytes after the {self._encoding} stream")
            return True
        if not chunk and not self._input:
            raise AbortError(INTERNAL, f"the {self._encoding} message is truncated")
        return False

    def finish(self) -> None:
        """Inflate to the end (a worker thread's job for a large message)."""
        with self._lock:
            self._running = True
        try:
            while not self.step():
                pass
        finally:
            with self._lock:
                self._running = False
                if self._abandoned:
                    self._release_locked()

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def abandon(self) -> None:
        """The call is gone: stop at the next step; the charge goes back once no thread runs."""
        with self._lock:
            self._abandoned = True
            if not self._running:
                self._release_locked()

    def settle(self) -> bytearray:
        """On the event loop, once inflated: the output, its charge moved to the caller's."""
        with self._lock:
            self._budget.settle_inflated(self.charged)
            self.charged = 0
        return self.output

    def _release_locked(self) -> None:
        if self.charged:
            self._budget.release_inflating(self.charged)
            self.charged = 0
        self.output = bytearray()
