"""The control channel between the supervisor and a worker: JSON messages, each prefixed by its
length, over a Unix socket; either side can ask the other and await the answer, or a stream of
answers. Workers use the same channel with pickled frames to forward sequence requests to each
other (sequences.py), streamed for decoupled models, and under --shared-batching to submit
requests to a model's owner: there, on the request path, the frames of one loop pass leave in
one write, every frame that arrived in one read is handled without an await, a submission is
answered from its future's callback rather than by a task, and the bytes reach the channel from
the event loop's read callback (`ChannelProtocol`) rather than through a reader task: a
StreamReader costs a future and a task step per read, about 5 µs on each side of a hop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, cast

logger = logging.getLogger("ferry.workers")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Any]]
# answers a request from a callback: the future of its reply, or None to leave it to the handler
Immediate = Callable[[Message], "asyncio.Future[Any] | None"]
StreamHandler = Callable[[Message], AsyncIterator[Any]]
Dumps = Callable[[Any], bytes]
Loads = Callable[[memoryview], Any]  # one frame's bytes
_LENGTH_BYTES = 4
_READ_BYTES = 256 * 1024  # what one read takes: every frame that has arrived, up to this


class FrameWriter(Protocol):
    """Where a channel writes: a StreamWriter, or the transport of a ChannelProtocol."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: Iterable[bytes]) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...


def _json_loads(frame: memoryview) -> Any:
    return json.loads(bytes(frame))


def _json_dumps(frame: Any) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode()


class ChannelClosed(ConnectionError):
    """The other side went away (a worker died, or the supervisor stopped)."""


class RemoteError(RuntimeError):
    """The other side's handler raised; `kind` and `message` say what it raised."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


class Channel:
    """One end of a control connection. `handler` answers the other side's requests (its
    return value is the reply; an exception becomes a RemoteError there); `stream_handler`
    answers its stream requests with the items it yields.

    Frames: {"id", "request"} answered by {"id", "reply"} or {"id", "error"};
    {"id", "stream"} answered by {"id", "item"}... then {"id", "end"} or {"id", "error"}.

    The bytes come from `reader` (`run` reads them), or, with no reader, from the
    ChannelProtocol of its connection (`feed`, `lost`)."""

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: FrameWriter,
        handler: Handler,
        dumps: Dumps = _json_dumps,
        loads: Loads = _json_loads,
        stream_handler: StreamHandler | None = None,
        immediate: Immediate | None = None,
        coalesce: bool = False,
    ) -> None:
        self._reader, self._writer, self._handler = reader, writer, handler
        self._stream_handler, self._immediate = stream_handler, immediate
        self._answering: set[asyncio.Future[Any]] = set()  # immediate answers not yet sent
        self._dumps, self._loads = dumps, loads
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # what the other side streams back: ("item", value), ("end", None), ("error", [kind,
        # message]) or ("closed", None)
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        # coalesce: the frames written in one loop pass leave together at its end (see _send)
        self._coalesce = coalesce
        self._queued: list[bytes] | None = None
        # the start of a frame that has not fully arrived, in pieces, and its length so far
        self._partial: list[bytes] = []
        self._partial_bytes = 0
        self._partial_needed = 0  # the bytes the frame needs in all (0: its header is not in)
        self._on_lost: list[Callable[[], None]] = []

    async def request(self, message: Message) -> Any:
        """Send `message` and wait for the reply's value."""
        if self.closed.is_set():
            raise ChannelClosed("control channel closed")
        self._next_id += 1
        frame_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[frame_id] = future
        self._send({"id": frame_id, "request": message})
        try:
            return await future
        finally:
            self._pending.pop(frame_id, None)

    async def stream(self, message: Message) -> AsyncIterator[Any]:
        """Send `message` as a stream request and yield the other side's items as they come
        (RemoteError when its handler raised, ChannelClosed when the connection ends first)."""
        if self.closed.is_set():
            raise ChannelClosed("control channel closed")
        self._next_id += 1
        frame_id = self._next_id
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._streams[frame_id] = items
        self._send({"id": frame_id, "stream": message})
        try:
            while True:
                kind, value = await items.get()
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                elif kind == "error":
                    raise RemoteError(*value)
                else:
                    raise ChannelClosed("control channel closed")
        finally:
            self._streams.pop(frame_id, None)

    def _send(self, frame: Message) -> None:
        """Write one frame, or with `coalesce` queue it: the frames of one loop pass then leave
        in one write (under load a worker forwards many requests, and an owner answers a whole
        batch, in one pass: one syscall, and one wake-up of the other side, for all of them).
        A queued frame is lost if the connection closes before the pass ends, as one written
        just before the process died would be."""
        body = self._dumps(frame)
        if not self._coalesce:
            self._writer.write(len(body).to_bytes(_LENGTH_BYTES, "big") + body)
            return
        queued = self._queued
        if queued is None:
            queued = self._queued = []
            asyncio.get_running_loop().call_soon(self._flush)
        queued.append(len(body).to_bytes(_LENGTH_BYTES, "big"))
        queued.append(body)

    def _flush(self) -> None:
        queued, self._queued = self._queued, None
        if queued and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):  # the other side went away
                self._writer.writelines(queued)

    async def run(self) -> None:
        """Read frames until the connection ends; then fail every pending request. (Fed by a
        ChannelProtocol: wait until the connection ends.)"""
        reader = self._reader
        if reader is None:
            await self.closed.wait()
            return
        try:
            while chunk := await reader.read(_READ_BYTES):
                self.feed(chunk)
        except ConnectionError:
            pass
        finally:
            self.lost()

    def feed(self, chunk: bytes) -> None:
        """Bytes that arrived: every frame they complete is handled now, without an await."""
        if self._partial:
            self._partial.append(chunk)
            self._partial_bytes += len(chunk)
            if self._partial_bytes < (self._partial_needed or _LENGTH_BYTES):
                return  # (a large frame: its pieces are joined once, when it is all in)
            chunk = b"".join(self._partial)
            self._partial.clear()
        view, offset, size = memoryview(chunk), 0, len(chunk)
        needed = 0
        while size - offset >= _LENGTH_BYTES:
            header_end = offset + _LENGTH_BYTES
            end = header_end + int.from_bytes(view[offset:header_end], "big")
            if end > size:
                needed = end - offset
                break
            self._receive(self._loads(view[header_end:end]))
            offset = end
        if offset < size:
            rest = chunk[offset:]
            self._partial.append(rest)
            self._partial_bytes, self._partial_needed = len(rest), needed

    def lost(self) -> None:
        """The connection ended: fail every pending request and stream."""
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("control channel closed"))
        for items in self._streams.values():
            items.put_nowait(("closed", None))
        self._writer.close()
        for callback in self._on_lost:
            callback()

    def when_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the connection has ended (now, if it has)."""
        if self.closed.is_set():
            callback()
        else:
            self._on_lost.append(callback)

    def close(self) -> None:
        """End the connection (its pending requests fail once it has ended)."""
        self._writer.close()

    def _receive(self, frame: Message) -> None:
        """One frame from the other side: a request to answer, or an answer to one of ours."""
        if "request" in frame and self._immediate is not None:
            try:
                answer = self._immediate(frame["request"])
            except Exception as exc:  # the asker gets it as a RemoteError
                self._send_if_open(_error_frame(frame["id"], exc))
                return
            if answer is not None:
                self._answering.add(answer)
                answer.add_done_callback(functools.partial(self._send_answer, frame["id"]))
                return
        if "request" in frame or "stream" in frame:
            task = asyncio.create_task(
                self._answer(frame["id"], frame["request"])
                if "request" in frame
                else self._answer_stream(frame["id"], frame["stream"])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif frame["id"] in self._streams:
            items = self._streams[frame["id"]]
            if "item" in frame:
                items.put_nowait(("item", frame["item"]))
            elif "error" in frame:
                items.put_nowait(("error", frame["error"]))
            else:
                items.put_nowait(("end", None))
        else:
            future = self._pending.get(frame["id"])
            if future is not None and not future.done():
                if "error" in frame:
                    future.set_exception(RemoteError(*frame["error"]))
                else:
                    future.set_result(frame.get("reply"))

    async def answered(self) -> None:
        """Wait until the requests this side is answering have been answered."""
        if self._tasks or self._answering:
            await asyncio.gather(*self._tasks, *self._answering, return_exceptions=True)

    def _send_answer(self, frame_id: int, answer: asyncio.Future[Any]) -> None:
        """An immediate answer's future is done: its reply or its error goes back."""
        self._answering.discard(answer)
        if answer.cancelled():
            reply = _error_frame(frame_id, RuntimeError("the request was cancelled"))
        elif (failure := answer.exception()) is not None:
            reply = _error_frame(frame_id, cast(Exception, failure))
        else:
            reply = {"id": frame_id, "reply": answer.result()}
        self._send_if_open(reply)

    async def _answer(self, frame_id: int, message: Message) -> None:
        try:
            reply: Message = {"id": frame_id, "reply": await self._handler(message)}
        except Exception as exc:  # the asker gets it as a RemoteError
            reply = _error_frame(frame_id, exc)
        self._send_if_open(reply)

    async def _answer_stream(self, frame_id: int, message: Message) -> None:
        try:
            if self._stream_handler is None:
                raise ValueError("this side takes no stream requests")
            async for item in self._stream_handler(message):
                self._send_if_open({"id": frame_id, "item": item})
            reply: Message = {"id": frame_id, "end": True}
        except Exception as exc:  # the asker gets it as a RemoteError
            reply = _error_frame(frame_id, exc)
        self._send_if_open(reply)

    def _send_if_open(self, frame: Message) -> None:
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError):
                self._send(frame)


def _error_frame(frame_id: int, exc: Exception) -> Message:
    """A handler's exception as the asker's RemoteError (kind: a ServingError's kind)."""
    kind = getattr(exc, "kind", None)
    text = getattr(exc, "message", None) or str(exc)
    return {"id": frame_id, "error": [str(getattr(kind, "value", kind or "")), text]}


class ChannelProtocol(asyncio.Protocol):
    """A connection whose bytes go straight to its Channel (made by `make` from the transport)."""

    def __init__(self, make: Callable[[asyncio.Transport], Channel]) -> None:
        self._make = make
        self.channel: Channel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.channel = self._make(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        assert self.channel is not None
        self.channel.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None:
            self.channel.lost()


async def connect_channel(path: Path, make: Callable[[asyncio.Transport], Channel]) -> Channel:
    """A channel on a new connection to the Unix socket at `path` (OSError if none listens)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_unix_connection(lambda: ChannelProtocol(make), str(path))
    assert protocol.channel is not None
    return protocol.channel


async def serve_channels(
    path: Path, make: Callable[[asyncio.Transport], Channel]
) -> asyncio.AbstractServer:
    """Listen on the Unix socket at `path`; each connection gets a channel from `make`."""
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: ChannelProtocol(make), str(path))
