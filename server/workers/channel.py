"""The control channel between the supervisor and a worker: JSON messages, each prefixed by its
length, over a Unix socket; either side can ask the other and await the answer, or a stream of
answers. Workers use the same channel with pickled frames to forward sequence requests to each
other (sequences.py), streamed for decoupled models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

logger = logging.getLogger("ferry.workers")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Any]]
StreamHandler = Callable[[Message], AsyncIterator[Any]]
Dumps = Callable[[Any], bytes]
Loads = Callable[[bytes], Any]
_LENGTH_BYTES = 4


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
    {"id", "stream"} answered by {"id", "item"}... then {"id", "end"} or {"id", "error"}."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        dumps: Dumps = _json_dumps,
        loads: Loads = json.loads,
        stream_handler: StreamHandler | None = None,
    ) -> None:
        self._reader, self._writer, self._handler = reader, writer, handler
        self._stream_handler = stream_handler
        self._dumps, self._loads = dumps, loads
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # what the other side streams back: ("item", value), ("end", None), ("error", [kind,
        # message]) or ("closed", None)
        self._streams: dict[int, asyncio.Queue[tuple[str, Any]]] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

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
        body = self._dumps(frame)
        self._writer.write(len(body).to_bytes(_LENGTH_BYTES, "big") + body)

    async def run(self) -> None:
        """Read frames until the connection ends; then fail every pending request."""
        try:
            while True:
                header = await self._reader.readexactly(_LENGTH_BYTES)
                frame = self._loads(await self._reader.readexactly(int.from_bytes(header, "big")))
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
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChannelClosed("control channel closed"))
            for items in self._streams.values():
                items.put_nowait(("closed", None))
            self._writer.close()

    async def answered(self) -> None:
        """Wait until the requests this side is answering have been answered."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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
