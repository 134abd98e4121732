"""server/workers/handoff.py: which worker an idle connection moves to, and the move itself (a
real TCP connection on loopback passed between two workers' ends in one process)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.connection_moves import GRPC, HTTP
from server.workers import handoff
from server.workers.handoff import ConnectionCounts, ConnectionHandoff, handoff_path


def _owner_zero(model: str, version: str) -> int | None:
    return 0 if model == "remote" else None


def _workers(tmp_path: Path) -> tuple[ConnectionHandoff, ConnectionHandoff]:
    """Worker 0's end (it owns the model "remote") and worker 1's."""
    return (
        ConnectionHandoff(tmp_path, 2, 0, _owner_zero),
        ConnectionHandoff(tmp_path, 2, 1, _owner_zero),
    )


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, the server's accepted socket) of one loopback TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()


def test_counts_are_shared_through_the_file_and_a_restarted_slot_starts_at_zero(
    tmp_path: Path,
) -> None:
    first, second = ConnectionCounts(tmp_path, 2, 0), ConnectionCounts(tmp_path, 2, 1)
    first.add(3)
    second.add(1)
    assert (second[0], first[1]) == (3, 1)
    first.add(-1)
    assert second[0] == 2
    again = ConnectionCounts(tmp_path, 2, 0)  # slot 0's worker restarted
    assert second[0] == 0 and again[1] == 1
    for counts in (first, second, again):
        counts.close()


def test_a_connection_moves_only_toward_an_owner_holding_no_connection(
    tmp_path: Path,
) -> None:
    owner, other = _workers(tmp_path)
    other.opened()
    assert other.target("remote", "") == 0
    assert other.target("local", "1") is None  # this worker runs it
    assert owner.target("remote", "") is None  # (the owner's own view: it runs it)
    owner.opened()
    other.opened()
    assert other.target("remote", "") is None  # the owner holds one
    owner.closed()
    assert other.target("remote", "") == 0
    other.stop()
    assert other.target("remote", "") is None  # shutting down: nothing moves
    owner.stop()


def test_a_grpc_connection_moves_when_accepted_only_to_a_sole_idle_owner(tmp_path: Path) -> None:
    sole: list[int | None] = [0]
    owner = ConnectionHandoff(tmp_path, 2, 0, _owner_zero, lambda: None)
    other = ConnectionHandoff(tmp_path, 2, 1, _owner_zero, lambda: sole[0])
    assert other.accept_target() == 0
    owner.opened()
    assert other.accept_target() is None  # the owner holds a connection
    owner.closed()
    sole[0] = None  # models of two owners, or one this worker runs
    assert other.accept_target() is None
    owner.stop()
    other.stop()


async def _one_move_at_a_time_until_the_owner_counts_it(
    tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    _, accepted = tcp_pair
    owner, other = _workers(tmp_path)
    adopted = asyncio.Event()

    async def adopt(sock: socket.socket) -> None:
        sock.close()
        adopted.set()

    owner.start({HTTP: adopt})
    other.opened()
    assert other.target("remote", "") == 0
    assert other.send(accepted.fileno(), 0, HTTP)
    assert other.target("remote", "") is None  # on its way, not counted there yet
    await asyncio.wait_for(adopted.wait(), 5)  # taken (and here closed at once)
    await asyncio.sleep(0.05)  # the adoption task's done callback counts it
    assert owner.counts.taken(0) == 1
    assert other.target("remote", "") == 0
    handoff.SETTLE_S, settle = 0.0, handoff.SETTLE_S
    try:
        assert other.send(accepted.fileno(), 0, HTTP)
        assert other.target("remote", "") == 0  # (settled at once)
    finally:
        handoff.SETTLE_S = settle
    owner.stop()
    other.stop()


async def _a_kind_nobody_serves_is_closed(
    tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, accepted = tcp_pair
    owner, other = _workers(tmp_path)

    async def adopt(sock: socket.socket) -> None:
        raise AssertionError("an HTTP adopter takes no gRPC connection")

    owner.start({HTTP: adopt})
    assert other.send(accepted.fileno(), 0, GRPC)
    accepted.close()
    client.settimeout(5)
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, client.recv, 10) == b""
    assert owner.moved_in == 0
    owner.stop()
    other.stop()


async def _a_moved_socket_keeps_the_connection_and_its_unread_bytes(
    tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, accepted = tcp_pair
    owner, other = _workers(tmp_path)
    adopted: asyncio.Queue[socket.socket] = asyncio.Queue()

    async def adopt(sock: socket.socket) -> None:
        await adopted.put(sock)

    owner.start({HTTP: adopt})
    client.sendall(b"sent before the move")
    assert other.send(accepted.fileno(), 0, HTTP)
    accepted.close()  # the sender's descriptor: the connection lives on in the owner
    moved = await asyncio.wait_for(adopted.get(), 5)
    try:
        moved.setblocking(True)
        assert moved.recv(100) == b"sent before the move"
        client.sendall(b"after")
        assert moved.recv(100) == b"after"
        moved.sendall(b"answer")
        assert client.recv(100) == b"answer"
        assert (other.moved_out[HTTP], owner.moved_in) == (1, 1)
    finally:
        moved.close()
        owner.stop()
        other.stop()


async def _a_socket_stays_when_the_owner_is_not_listening_or_stopped(
    tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    _, accepted = tcp_pair
    other = ConnectionHandoff(tmp_path, 2, 1, _owner_zero)
    assert not other.send(accepted.fileno(), 0, HTTP)  # no worker 0 listening
    owner = ConnectionHandoff(tmp_path, 2, 0, _owner_zero)

    async def adopt(sock: socket.socket) -> None:
        raise AssertionError("a stopped worker adopts nothing")

    owner.start({HTTP: adopt})
    owner.stop()
    assert not handoff_path(tmp_path, 0).exists()
    assert not other.send(accepted.fileno(), 0, HTTP)
    assert other.moved_out == {HTTP: 0, GRPC: 0}
    other.stop()


async def _a_failed_adoption_closes_the_socket(
    tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, accepted = tcp_pair
    owner, other = _workers(tmp_path)
    failed = asyncio.Event()

    async def adopt(sock: socket.socket) -> None:
        failed.set()
        raise OSError("cannot serve it")

    owner.start({HTTP: adopt})
    assert other.send(accepted.fileno(), 0, HTTP)
    accepted.close()
    await asyncio.wait_for(failed.wait(), 5)
    await asyncio.sleep(0.05)  # the task's done callback
    client.settimeout(5)
    assert client.recv(10) == b""  # closed: the client sees the end, not a hang
    owner.stop()
    other.stop()


Scenario = Callable[[Path, tuple[socket.socket, socket.socket]], Coroutine[Any, Any, None]]


@pytest.mark.parametrize(
    "scenario",
    [
        _one_move_at_a_time_until_the_owner_counts_it,
        _a_kind_nobody_serves_is_closed,
        _a_moved_socket_keeps_the_connection_and_its_unread_bytes,
        _a_socket_stays_when_the_owner_is_not_listening_or_stopped,
        _a_failed_adoption_closes_the_socket,
    ],
    ids=lambda scenario: scenario.__name__.strip("_"),
)
def test_moves(
    scenario: Scenario, tmp_path: Path, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    asyncio.run(scenario(tmp_path, tcp_pair))
