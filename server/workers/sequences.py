"""Sequence affinity across the workers of `ferry serve --workers N`.

A sequence's state (its batcher slot, its implicit state tensors) lives in one worker, but the
kernel hands each new connection to any worker, so the requests of one sequence can reach
different workers (a client that opens a connection per request, a proxy that pools its
upstream connections). Every sequence therefore has an owner: worker `crc32(correlation ID) %
N`, the same answer in every worker. A request of a sequence model that reaches another worker
is forwarded to its owner over a Unix socket in the supervisor's private folder, run there as
if it had arrived there (validation, statistics, logs: counted once, by the owner), and its
response or error comes back to the client unchanged. A request of a decoupled sequence model
(gRPC ModelStreamInfer) streams its responses back as the owner produces them.

With `ferry serve --shared-batching`, every model has an owner too: worker `crc32(model name) %
N`. The same connections carry what the other workers ask of it (server/workers/
remote_model.py): submissions to the batcher of a model it alone loads, the verdict of its loads,
and a decoupled model's whole requests, streamed back as above.

The connection is the control channel of server/workers/channel.py with pickled frames
(server/workers/frames.py; the folder is the supervisor's, mode 0700, so only this server's
processes can connect): a request carries the InferenceRequest, the answer the
InferenceResponse or the owner's error; a streamed answer carries InferenceResponse items and
failed responses as (kind, message) pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from server.errors import ServingError, WorkerStopped, WorkerUnreachable
from server.types import InferenceRequest, InferenceResponse
from server.workers import frames
from server.workers.channel import (
    Channel,
    ChannelClosed,
    Immediate,
    Message,
    RemoteError,
    connect_channel,
    serve_channels,
)
from server.workers.link import serving_error

Infer = Callable[[InferenceRequest], Awaitable[InferenceResponse]]
OwnerCall = Callable[..., Awaitable[Any]]
# an owner call answered from its future's callback, without a task (see Channel's `immediate`)
ImmediateCall = Callable[..., "asyncio.Future[Any]"]
InferStream = Callable[[InferenceRequest], AsyncIterator[InferenceResponse | ServingError]]


def owner_of(sequence_id: int | str, workers: int) -> int:
    """The worker slot that runs every request of this sequence (integer and string IDs are
    different sequences, as in Triton)."""
    tag = b"s:" + sequence_id.encode() if isinstance(sequence_id, str) else b"i:%d" % sequence_id
    return zlib.crc32(tag) % workers


def model_owner_of(model_name: str, workers: int) -> int:
    """The worker slot that runs every request of this model under --shared-batching."""
    return zlib.crc32(b"m:" + model_name.encode()) % workers


def socket_path(folder: Path, slot: int) -> Path:
    """Where worker `slot` takes forwarded sequence requests."""
    return folder / f"sequences-{slot}.sock"


def _pickled_channel(
    transport: asyncio.Transport,
    handler: Callable[[Message], Awaitable[Any]],
    stream_handler: Callable[[Message], AsyncIterator[Any]] | None = None,
    immediate: Immediate | None = None,
) -> Channel:
    # pickle: our own workers only (the socket is in the supervisor's private folder); fed by
    # its ChannelProtocol (no reader task on the request path)
    return Channel(
        None, transport, handler, frames.dumps, frames.loads, stream_handler, immediate, True
    )


async def _refuse(message: Message) -> Any:
    raise ValueError("a forwarding worker takes no requests on its own connection")


class _Peer:
    """One connection to another worker, shared by the requests forwarded to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.channel: Channel | None = None
        self._connecting = asyncio.Lock()

    async def call(self, request: InferenceRequest) -> InferenceResponse:
        answer: InferenceResponse = await self.send({"request": request})
        return answer

    async def send(self, message: Message) -> Any:
        """The peer's answer to `message`, or its error raised here."""
        channel = await self._connected()
        try:
            return await channel.request(message)
        except (RemoteError, ChannelClosed) as exc:
            raise _client_error(exc) from None

    async def stream(
        self, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        channel = await self._connected()
        try:
            async for item in channel.stream({"request": request}):
                yield item if isinstance(item, InferenceResponse) else ServingError(*item)
        except (RemoteError, ChannelClosed) as exc:
            raise _client_error(exc) from None

    async def _connected(self) -> Channel:
        channel = self.channel
        if channel is not None and not channel.closed.is_set():  # (the request path: no lock)
            return channel
        async with self._connecting:
            if self.channel is None or self.channel.closed.is_set():
                try:
                    self.channel = await connect_channel(
                        self.path, lambda transport: _pickled_channel(transport, _refuse)
                    )
                except OSError:
                    raise WorkerUnreachable(
                        "the worker that runs this request (its sequence's or model's owner) "
                        "is not running (it restarts)"
                    ) from None
            return self.channel

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def _client_error(exc: RemoteError | ChannelClosed) -> ServingError:
    """The owner's error as its client would have seen it, or the owner gone."""
    if isinstance(exc, RemoteError):
        return serving_error(exc)
    return WorkerStopped(
        "the worker that ran this request stopped before it answered (a model's or a "
        "sequence's owner; the sequences it held are lost)"
    )


class SequenceRouter:
    """This worker's end of sequence affinity: forwards what another worker owns, and runs
    what the other workers forward here."""

    def __init__(self, folder: Path, slot: int, workers: int) -> None:
        self.folder, self.slot, self.workers = folder, slot, workers
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.AbstractServer | None = None
        self._infer: Infer | None = None
        self._infer_stream: InferStream | None = None
        self._owner_calls: dict[str, OwnerCall] = {}
        self._immediate_calls: dict[str, ImmediateCall] = {}
        self._answering: set[Channel] = set()
        self._no_peers = asyncio.Event()  # no other worker is connected here
        self._no_peers.set()

    def owner(self, sequence_id: int | str) -> int | None:
        """The slot to forward to, or None when this worker owns the sequence."""
        slot = owner_of(sequence_id, self.workers)
        return None if slot == self.slot else slot

    def model_owner(self, model_name: str) -> int | None:
        """The slot to forward a model's requests to under --shared-batching, or None when
        this worker runs them."""
        slot = model_owner_of(model_name, self.workers)
        return None if slot == self.slot else slot

    async def forward(self, slot: int, request: InferenceRequest) -> InferenceResponse:
        """Run `request` on worker `slot`; its response, or its error raised here."""
        return await self._peer(slot).call(request)

    def forward_stream(
        self, slot: int, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        """Run a decoupled model's `request` on worker `slot`; its responses as they come."""
        return self._peer(slot).stream(request)

    async def call_owner(self, slot: int, message: Message) -> Any:
        """Worker `slot`'s answer to `message` (a RemoteScheduler's submission)."""
        return await self._peer(slot).send(message)

    def _peer(self, slot: int) -> _Peer:
        peer = self._peers.get(slot)
        if peer is None:
            peer = self._peers[slot] = _Peer(socket_path(self.folder, slot))
        return peer

    async def start(
        self,
        infer: Infer,
        infer_stream: InferStream,
        owner_calls: Mapping[str, OwnerCall] | None = None,
        immediate_calls: Mapping[str, ImmediateCall] | None = None,
    ) -> None:
        """Take requests forwarded by the other workers; `infer` runs each one, `infer_stream`
        each one streamed, `owner_calls` what other workers ask of a model this worker owns
        (server/workers/remote_model.py: VERDICT), by message kind, and `immediate_calls` the
        same asked on the request path (SUBMIT: the future of its answer, no task per call)."""
        self._infer, self._infer_stream = infer, infer_stream
        self._owner_calls = dict(owner_calls or {})
        self._immediate_calls = dict(immediate_calls or {})
        path = socket_path(self.folder, self.slot)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous run of this slot's worker
        self._server = await serve_channels(path, self._accept)

    def _accept(self, transport: asyncio.Transport) -> Channel:
        """Another worker connected: its channel, answered here until it hangs up."""
        channel = _pickled_channel(transport, self._run, self._run_stream, self._run_immediate)
        self._answering.add(channel)
        self._no_peers.clear()
        channel.when_lost(lambda: self._hung_up(channel))
        return channel

    def _hung_up(self, channel: Channel) -> None:
        self._answering.discard(channel)
        if not self._answering:
            self._no_peers.set()

    async def _run(self, message: Message) -> Any:
        """A forwarded request, run here as if it had arrived here, or an owner call (its error
        goes back as the channel's RemoteError)."""
        for kind, call in self._owner_calls.items():
            if kind in message:
                return await call(*message[kind])
        if "request" not in message:
            raise ValueError("this worker runs no model for the others")
        assert self._infer is not None
        return await self._infer(message["request"])

    def _run_immediate(self, message: Message) -> asyncio.Future[Any] | None:
        """An immediate owner call's future, or None for what `_run` answers."""
        for kind, call in self._immediate_calls.items():
            if kind in message:
                return call(*message[kind])
        return None

    async def _run_stream(self, message: Message) -> AsyncIterator[Any]:
        """A forwarded request of a decoupled model: its responses, a failed one as (kind,
        message) (a ServingError does not survive pickling)."""
        assert self._infer_stream is not None
        async for item in self._infer_stream(message["request"]):
            yield (item.kind, item.message) if isinstance(item, ServingError) else item

    async def close(self, wait_for_peers_s: float = 0.0) -> None:
        """Once this worker has drained: close its connections to the others (it has nothing
        more to send), keep answering what the others forward until they have closed theirs
        (they drain too, and a request one of them accepted may still be on its way to a model
        this worker owns), for at most `wait_for_peers_s`; then stop taking forwarded requests
        (those running finish)."""
        for peer in self._peers.values():
            peer.close()
        if wait_for_peers_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_peers.wait(), wait_for_peers_s)
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(channel.answered() for channel in list(self._answering)))
