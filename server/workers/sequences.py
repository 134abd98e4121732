"""Sequence affinity across the workers of `ferry serve --workers N`.

A sequence's state (its batcher slot, its implicit state tensors) lives in one worker, but the
kernel hands each new connection to any worker, so the requests of one sequence can reach
different workers (a client that opens a connection per request, a proxy that pools its
upstream connections). Every sequence therefore has an owner: worker `crc32(correlation ID) %
N`, the same answer in every worker. A request of a sequence model that reaches another worker
is forwarded to its owner over a Unix socket in the supervisor's private folder, run there as
if it had arrived there (validation, statistics, logs: counted once, by the owner), and its
response or error comes back to the client unchanged.

Frames are a 4-byte length and a pickle (the folder is the supervisor's, mode 0700, so only
this server's processes can connect): a request is `(id, InferenceRequest)`, an answer `(id,
InferenceResponse)` or `(id, (error kind, message))`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.errors import ErrorKind, ServingError
from server.types import InferenceRequest, InferenceResponse

logger = logging.getLogger("ferry.workers")

Infer = Callable[[InferenceRequest], Awaitable[InferenceResponse]]
_LENGTH_BYTES = 4
MAX_FRAME_BYTES = (1 << 32) - 1


def owner_of(sequence_id: int | str, workers: int) -> int:
    """The worker slot that runs every request of this sequence (integer and string IDs are
    different sequences, as in Triton)."""
    tag = b"s:" + sequence_id.encode() if isinstance(sequence_id, str) else b"i:%d" % sequence_id
    return zlib.crc32(tag) % workers


def socket_path(folder: Path, slot: int) -> Path:
    """Where worker `slot` takes forwarded sequence requests."""
    return folder / f"sequences-{slot}.sock"


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    length = int.from_bytes(await reader.readexactly(_LENGTH_BYTES), "big")
    return pickle.loads(await reader.readexactly(length))


def _frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME_BYTES:
        raise ServingError(ErrorKind.INVALID_ARG, "request too large to forward to its worker")
    return len(body).to_bytes(_LENGTH_BYTES, "big") + body


class _Peer:
    """One connection to another worker, shared by the requests forwarded to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def call(self, request: InferenceRequest) -> Any:
        writer = await self._connected()
        self.next_id += 1
        frame_id = self.next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[frame_id] = future
        try:
            writer.write(_frame((frame_id, request)))
            return await future
        finally:
            self.pending.pop(frame_id, None)

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self.writer is None or self.writer.is_closing():
                try:
                    reader, self.writer = await asyncio.open_unix_connection(str(self.path))
                except OSError:
                    raise ServingError(
                        ErrorKind.UNAVAILABLE,
                        "the worker that serves this sequence is not running (it restarts)",
                    ) from None
                self.reading = asyncio.create_task(self._read(reader))
            return self.writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame_id, answer = await _read_frame(reader)
                future = self.pending.get(frame_id)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.writer is not None:
                self.writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(
                        ServingError(
                            ErrorKind.UNAVAILABLE,
                            "the worker that served this sequence stopped; the sequence is lost",
                        )
                    )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reading is not None:
            self.reading.cancel()


class SequenceRouter:
    """This worker's end of sequence affinity: forwards what another worker owns, and runs
    what the other workers forward here."""

    def __init__(self, folder: Path, slot: int, workers: int) -> None:
        self.folder, self.slot, self.workers = folder, slot, workers
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.AbstractServer | None = None
        self._infer: Infer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def owner(self, sequence_id: int | str) -> int | None:
        """The slot to forward to, or None when this worker owns the sequence."""
        slot = owner_of(sequence_id, self.workers)
        return None if slot == self.slot else slot

    async def forward(self, slot: int, request: InferenceRequest) -> InferenceResponse:
        """Run `request` on worker `slot`; its response, or its error raised here."""
        peer = self._peers.get(slot)
        if peer is None:
            peer = self._peers[slot] = _Peer(socket_path(self.folder, slot))
        answer = await peer.call(request)
        if isinstance(answer, InferenceResponse):
            return answer
        kind, message = answer
        raise ServingError(ErrorKind(kind), message)

    async def start(self, infer: Infer) -> None:
        """Take requests forwarded by the other workers; `infer` runs each one."""
        self._infer = infer
        path = socket_path(self.folder, self.slot)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous run of this slot's worker
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame_id, request = await _read_frame(reader)
                task = asyncio.create_task(self._run(frame_id, request, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _run(
        self, frame_id: int, request: InferenceRequest, writer: asyncio.StreamWriter
    ) -> None:
        assert self._infer is not None
        answer: Any
        try:
            answer = await self._infer(request)
        except ServingError as exc:
            answer = (exc.kind.value, exc.message)
        except Exception as exc:  # the caller gets it as an internal error
            logger.exception("a forwarded sequence request failed")
            answer = (ErrorKind.INTERNAL.value, f"internal error: {exc}")
        if not writer.is_closing():
            try:
                writer.write(_frame((frame_id, answer)))
            except ServingError as exc:
                writer.write(_frame((frame_id, (exc.kind.value, exc.message))))

    async def close(self) -> None:
        """Stop taking forwarded requests (those running finish) and close the connections."""
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self._peers.values():
            peer.close()
