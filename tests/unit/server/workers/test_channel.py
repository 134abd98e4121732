"""The control channel: requests both ways, failures as RemoteError, a closed peer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.errors import ErrorKind, ServingError
from server.workers import frames
from server.workers.channel import (
    Channel,
    ChannelClosed,
    ChannelProtocol,
    FrameWriter,
    Message,
    RemoteError,
    connect_channel,
    serve_channels,
)


async def pair() -> tuple[Channel, Channel, list[asyncio.Task[None]]]:
    left_sock, right_sock = socket.socketpair()

    async def left_handler(message: Message) -> Any:
        if message["op"] == "fail":
            raise ServingError(ErrorKind.INVALID_ARG, "bad model")
        return {"echo": message["value"] * 2}

    async def right_handler(message: Message) -> Any:
        return await right.request({"op": "echo", "value": message["value"] + 1})

    left = Channel(*await asyncio.open_unix_connection(sock=left_sock), left_handler)
    right = Channel(*await asyncio.open_unix_connection(sock=right_sock), right_handler)
    return left, right, [asyncio.create_task(left.run()), asyncio.create_task(right.run())]


def test_requests_both_ways_and_remote_errors() -> None:
    async def scenario() -> None:
        left, right, tasks = await pair()
        assert await right.request({"op": "echo", "value": 2}) == {"echo": 4}
        # the right side answers by asking the left side back: nested requests do not block
        assert await left.request({"op": "nested", "value": 1}) == {"echo": 4}
        with pytest.raises(RemoteError) as error:
            await right.request({"op": "fail"})
        assert (error.value.kind, error.value.message) == ("INVALID_ARG", "bad model")
        many = await asyncio.gather(*(right.request({"op": "echo", "value": i}) for i in range(50)))
        assert [m["echo"] for m in many] == [2 * i for i in range(50)]
        left.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # both ends see the connection end
        assert left.closed.is_set() and right.closed.is_set()

    asyncio.run(scenario())


def test_a_closed_peer_fails_pending_and_later_requests() -> None:
    async def scenario() -> None:
        left_sock, right_sock = socket.socketpair()
        never = asyncio.Event()

        async def stuck(_: Message) -> Any:
            await never.wait()

        left = Channel(*await asyncio.open_unix_connection(sock=left_sock), stuck)
        task = asyncio.create_task(left.run())
        _reader, writer = await asyncio.open_unix_connection(sock=right_sock)
        pending = asyncio.create_task(left.request({"op": "x"}))
        await asyncio.sleep(0.01)
        writer.close()
        with pytest.raises(ChannelClosed):
            await pending
        await task
        with pytest.raises(ChannelClosed):
            await left.request({"op": "y"})

    asyncio.run(scenario())


def test_streams_yield_items_in_order_end_fail_and_close() -> None:
    async def scenario() -> None:
        left_sock, right_sock = socket.socketpair()
        release = asyncio.Event()

        async def counting(message: Message) -> AsyncIterator[Any]:
            for i in range(message["count"]):
                yield {"n": i}
            if message.get("fail"):
                raise ServingError(ErrorKind.INVALID_ARG, "step failed")
            if message.get("hang"):
                await release.wait()

        async def no_requests(_: Message) -> Any:
            raise AssertionError("unary request")

        left = Channel(
            *await asyncio.open_unix_connection(sock=left_sock), no_requests, stream_handler=None
        )
        right = Channel(
            *await asyncio.open_unix_connection(sock=right_sock),
            no_requests,
            stream_handler=counting,
        )
        tasks = [asyncio.create_task(left.run()), asyncio.create_task(right.run())]
        assert [item async for item in left.stream({"count": 3})] == [{"n": i} for i in range(3)]
        assert [item async for item in left.stream({"count": 0})] == []
        got: list[Any] = []
        with pytest.raises(RemoteError) as error:
            async for item in left.stream({"count": 2, "fail": True}):
                got.append(item)
        assert got == [{"n": 0}, {"n": 1}]  # the items before the failure still came
        assert (error.value.kind, error.value.message) == ("INVALID_ARG", "step failed")
        with pytest.raises(RemoteError, match="no stream requests"):  # a side without a handler
            async for _ in right.stream({"count": 1}):
                pass
        got = []
        with pytest.raises(ChannelClosed):  # the peer goes away mid-stream
            async for item in left.stream({"count": 1, "hang": True}):
                got.append(item)
                tasks[1].cancel()
        assert got == [{"n": 0}]
        tasks[0].cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("fed", [False, True], ids=["reader", "protocol"])
def test_coalesced_frames_immediate_answers_and_large_frames(fed: bool) -> None:
    """The workers' request-path channel (pickled, coalesced writes, immediate answers; fed by
    its ChannelProtocol, as between workers, or read by `run`): many
    requests sent in one loop pass are each answered, in any order of completion; an immediate
    call's future answers it (its result, its exception, or an error raised at once, as
    RemoteError), other requests still go to the handler; a frame larger than one read arrives
    whole; `answered` waits for the immediate answers still pending."""

    async def scenario() -> None:
        left_sock, right_sock = socket.socketpair()
        loop = asyncio.get_running_loop()
        held: list[asyncio.Future[Any]] = []
        holding = asyncio.Event()

        def immediate(message: Message) -> asyncio.Future[Any] | None:
            if "handler" in message:
                return None
            if "refuse" in message:
                raise ServingError(ErrorKind.UNAVAILABLE, "not now")
            future: asyncio.Future[Any] = loop.create_future()
            if "hold" in message:
                held.append(future)
                holding.set()
            elif "fail" in message:
                loop.call_later(0.001, future.set_exception, ValueError("late failure"))
            else:  # answered in reverse order of arrival
                loop.call_later(0.001 * (100 - message["n"]), future.set_result, message["n"])
            return future

        async def handler(message: Message) -> Any:
            return ("handled", message["handler"].nbytes if "handler" in message else None)

        def channel(sock: socket.socket, **options: Any) -> Any:
            def over(reader: asyncio.StreamReader | None, writer: FrameWriter) -> Channel:
                return Channel(
                    reader, writer, handler, frames.dumps, frames.loads, coalesce=True, **options
                )

            async def make() -> Channel:
                if not fed:
                    return over(*await asyncio.open_unix_connection(sock=sock))
                _, protocol = await loop.create_unix_connection(
                    lambda: ChannelProtocol(lambda transport: over(None, transport)), sock=sock
                )
                assert protocol.channel is not None
                return protocol.channel

            return make()

        left = await channel(left_sock)
        right = await channel(right_sock, immediate=immediate)
        tasks = [asyncio.create_task(left.run()), asyncio.create_task(right.run())]
        answers = await asyncio.gather(*(left.request({"n": n}) for n in range(100)))
        assert answers == list(range(100))
        with pytest.raises(RemoteError) as error:
            await left.request({"refuse": True})
        assert (error.value.kind, error.value.message) == ("UNAVAILABLE", "not now")
        with pytest.raises(RemoteError, match="late failure"):
            await left.request({"fail": True})
        big = np.arange(3 << 20, dtype=np.uint8)  # 3 MiB: several reads' worth
        assert await left.request({"handler": big}) == ("handled", big.nbytes)
        waiting = asyncio.create_task(left.request({"hold": True}))
        await holding.wait()
        answered = asyncio.create_task(right.answered())
        await asyncio.sleep(0.01)
        assert not answered.done()
        held[0].set_result("released")
        await answered
        assert await waiting == "released"
        left.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)  # both ends see the connection end
        assert left.closed.is_set() and right.closed.is_set()

    asyncio.run(scenario())


class Recorder:
    """A FrameWriter that keeps what is written (the channel's answers), and a handler."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        self.written.extend(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


class Parsed(Channel):
    """A channel that keeps the frames it parsed instead of acting on them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.parsed: list[Any] = []

    def _receive(self, frame: Message) -> None:
        self.parsed.append(frame)


@pytest.mark.parametrize("seed", range(5))
def test_frames_cut_anywhere_arrive_whole_and_in_order(seed: int) -> None:
    """`feed` with the bytes of many frames (small ones and a 1 MiB one) in random pieces, down
    to single bytes: each frame is handled once, whole, in order."""

    async def scenario() -> None:
        rng = np.random.default_rng(seed)
        channel = Parsed(None, Recorder(), _unused, frames.dumps, frames.loads)
        got = channel.parsed
        values: list[Any] = [{"n": n, "pad": bytes(int(rng.integers(0, 300)))} for n in range(40)]
        values.insert(17, {"big": np.arange(1 << 18, dtype=np.float32)})
        wire = b"".join(len(body).to_bytes(4, "big") + body for body in map(frames.dumps, values))
        cuts = np.concatenate(
            [
                rng.choice(np.arange(1, len(wire)), size=100, replace=False),
                rng.choice(np.arange(1, 12_000), size=300, replace=False),  # the small frames
                np.arange(10, 20),  # single bytes: a length header in pieces
            ]
        )
        for piece in np.split(np.frombuffer(wire, np.uint8), np.unique(cuts)):
            channel.feed(piece.tobytes())
        assert len(got) == len(values)
        for sent, parsed in zip(values, got, strict=True):
            assert sent.keys() == parsed.keys()
            if "big" in sent:
                np.testing.assert_array_equal(parsed["big"], sent["big"])
            else:
                assert parsed == sent

    asyncio.run(scenario())


async def _unused(_: Message) -> Any:
    raise AssertionError("no request expected")


def test_channels_served_and_connected_on_a_unix_socket(tmp_path: Path) -> None:
    """`serve_channels` / `connect_channel` (the workers' forwarding sockets): requests both
    ways; a side that closes fails the other's pending request and says so once."""

    async def scenario() -> None:
        accepted: list[Channel] = []
        lost: list[str] = []
        never = asyncio.Event()

        async def server_handler(message: Message) -> Any:
            if message.get("hang"):
                await never.wait()
            return message["n"] + 1

        def accept(transport: asyncio.Transport) -> Channel:
            channel = Channel(None, transport, server_handler)
            channel.when_lost(lambda: lost.append("server side"))
            accepted.append(channel)
            return channel

        async def client_handler(message: Message) -> Any:
            return -message["n"]

        server = await serve_channels(tmp_path / "s.sock", accept)
        client = await connect_channel(
            tmp_path / "s.sock", lambda transport: Channel(None, transport, client_handler)
        )
        assert await client.request({"n": 1}) == 2
        assert await accepted[0].request({"n": 5}) == -5  # the server side asks too
        pending = asyncio.create_task(client.request({"hang": True, "n": 0}))
        await asyncio.sleep(0.01)
        accepted[0].close()
        with pytest.raises(ChannelClosed):
            await pending
        await asyncio.wait_for(client.run(), 5)  # fed by its protocol: it ends with the link
        assert lost == ["server side"]
        accepted[0].when_lost(lambda: lost.append("late"))  # already lost: called at once
        assert lost == ["server side", "late"]
        server.close()
        with pytest.raises(OSError):
            await connect_channel(tmp_path / "none.sock", lambda t: Channel(None, t, _unused))

    asyncio.run(scenario())
