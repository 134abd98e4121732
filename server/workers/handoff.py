"""Under `ferry serve --workers N --shared-batching`: a client connection moves to the worker
that owns the model it calls, while that worker is idle.

With one batcher per model (server/workers/remote_model.py), a request that reaches a worker
other than its model's owner makes a round trip to the owner: two more process wake-ups, and the
request and its answer pickled. At concurrency 1 on a 2-core machine that is about 0.25 ms on
top of the 0.25 ms p50 the owner answers in. So a connection's socket is passed to the owner
(SCM_RIGHTS over a Unix datagram socket in the supervisor's private folder) and served there:

- HTTP/1.1: when a keep-alive connection goes idle after an infer request of a model another
  worker owns, and that worker holds no client connection. Only between requests: its last
  response written out in full, nothing read and left unparsed; the client's next bytes wait
  in the kernel for the new worker.
- gRPC: when the connection is accepted, before anything is read from it (its HTTP/2 state,
  header tables, windows and streams, would not move later), if one worker runs every model
  this one would send elsewhere and runs none here (one model in the repository, typically),
  and that worker holds no client connection. Not over TLS: the handshake has read it already.

So a single client ends up in its model's owner, with no hop at all, while many connections
stay where the kernel spread them and the protocol work still uses every core. (A rule that
moved HTTP connections while the owner held fewer than the worker they were in overshot under
wrk's 64 connections opened at once, moves not yet counted anywhere: 50 in the owner, 14 in
the other worker. The owner also runs the model, so it should hold fewer, not more.)

- A connection moves at most once, so one that calls models of several owners does not bounce.
- When the owner's queue of incoming sockets is full, or the owner is not running or stops,
  the connection stays where it is.
- A socket on its way to a worker that exits before taking it is closed, like that worker's
  own idle connections. An idle keep-alive connection may be closed at any time (RFC 9112
  9.6); clients retry on a fresh one.

Each worker publishes its count of open client connections (HTTP and gRPC), and of the moved
connections it has taken, in a small shared file (two 64-bit counts per worker, each written by
its own worker only); the others read them. A worker moves one connection to an owner at a time:
the next waits until the owner has taken the last (its open count then includes it).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from server.connection_moves import GRPC, HTTP
from server.workers.mapped_file import map_integers

logger = logging.getLogger("ferry.workers")

COUNTS_FILE = "client-connections"
_SLOT_INTEGERS = 2  # two 64-bit counts
SETTLE_S = 1.0  # after this, a moved connection the other worker never took is given up on
_MAX_SOCKETS_PER_MESSAGE = 4  # one is sent per message; more would be closed, not leaked
# (model, version) -> the slot of the worker that runs it for this one, or None
OwnerOf = Callable[[str, str], int | None]
# the one worker that runs every model this one sends elsewhere, when this one runs none of
# them itself (the connection calls that worker's models, whatever it asks), else None
SoleOwner = Callable[[], int | None]
Adopt = Callable[[socket.socket], Coroutine[Any, Any, Any]]


def handoff_path(folder: Path, slot: int) -> Path:
    """Where worker `slot` takes the connections moved to it."""
    return folder / f"handoff-{slot}.sock"


class ConnectionCounts:
    """Per worker, in a file each worker maps: its open client connections, and how many moved
    connections it has taken (served, or failed to serve) since it started."""

    def __init__(self, folder: Path, workers: int, slot: int) -> None:
        self.slot = slot
        self._others = [other for other in range(workers) if other != slot]
        descriptor = os.open(folder / COUNTS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._map, self._counts = map_integers(descriptor, workers * _SLOT_INTEGERS)
        finally:
            os.close(descriptor)
        # a restarted worker: its predecessor's connections are gone
        self._counts[2 * slot] = self._counts[2 * slot + 1] = 0

    def add(self, change: int) -> None:
        """This worker's open connections changed by `change`."""
        self._counts[2 * self.slot] += change

    def add_taken(self) -> None:
        self._counts[2 * self.slot + 1] += 1

    def __getitem__(self, slot: int) -> int:
        """Worker `slot`'s open connections."""
        return int(self._counts[2 * slot])

    def taken(self, slot: int) -> int:
        return int(self._counts[2 * slot + 1])

    def another_idle(self) -> bool:
        """Whether a worker other than this one holds no connection."""
        counts = self._counts
        return any(counts[2 * slot] == 0 for slot in self._others)

    def close(self) -> None:
        self._counts.release()
        self._map.close()


class ConnectionHandoff:
    """This worker's end of the moves (see the module's docstring): decides, sends, adopts."""

    def __init__(
        self,
        folder: Path,
        workers: int,
        slot: int,
        owner_of: OwnerOf,
        sole_owner: SoleOwner = lambda: None,
    ) -> None:
        self.folder, self.slot = folder, slot
        self._owner_of, self._sole_owner = owner_of, sole_owner
        self.counts = ConnectionCounts(folder, workers, slot)
        self.moved_in = 0
        self.moved_out: dict[bytes, int] = {HTTP: 0, GRPC: 0}  # by kind
        # worker -> (its taken count, a deadline) when this one last moved a connection there:
        # until its taken count passes that, the connection is on its way and counted nowhere.
        # Without this, the requests that end while the first moved connection travels would
        # all move theirs, the owner still counting none (the deadline: one that never arrives)
        self._settling: dict[int, tuple[int, float]] = {}
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._receiver: socket.socket | None = None
        self._adopt: Mapping[bytes, Adopt] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopting: set[asyncio.Task[Any]] = set()
        self.stopped = False

    # --- the connections of this worker --------------------------------------------------------

    def opened(self) -> None:
        self.counts.add(1)

    def closed(self) -> None:
        self.counts.add(-1)

    def target(self, model: str, version: str) -> int | None:
        """The worker an idle connection whose last request was for (model, version) moves to,
        or None: it stays (this worker runs the model, or the owner holds connections)."""
        if self.stopped or not self.counts.another_idle():
            return None  # (the common case under load: no model look-up on each request)
        return self._idle_owner(self._owner_of(model, version))

    def accept_target(self) -> int | None:
        """The worker a connection just accepted moves to before anything is read from it, or
        None. Used for gRPC, whose HTTP/2 state (header tables, windows, streams) stays with
        the worker that read its first bytes: only a connection whose every request would go
        to one worker (a repository whose models that worker runs: one model, typically) moves,
        and only when that worker holds no connection."""
        if self.stopped:
            return None
        return self._idle_owner(self._sole_owner())

    def _idle_owner(self, owner: int | None) -> int | None:
        """`owner` if it holds no client connection and none is on its way there."""
        if owner is None or owner == self.slot:
            return None
        if self.counts[owner] > 0:
            return None
        settling = self._settling.get(owner)
        if settling is not None:
            taken, deadline = settling
            if self.counts.taken(owner) <= taken and time.monotonic() < deadline:
                return None  # one is on its way there
            del self._settling[owner]
        return owner

    def send(self, descriptor: int, slot: int, kind: bytes) -> bool:
        """Pass the socket `descriptor` to worker `slot`, to be served as `kind` (HTTP or
        GRPC: server/connection_moves.py); False when it cannot take it now (its queue
        is full, or it is not running). The caller closes its own descriptor."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [descriptor]))]
        taken = self.counts.taken(slot)
        try:
            # (socket.send_fds would do, but it drops its address argument: CPython 3.11)
            self._sender.sendmsg([kind], rights, 0, str(handoff_path(self.folder, slot)))
        except OSError:  # BlockingIOError: its queue is full; else it is not listening
            return False
        self.moved_out[kind] = self.moved_out.get(kind, 0) + 1
        self._settling[slot] = (taken, time.monotonic() + SETTLE_S)
        return True

    # --- the connections moved to this worker --------------------------------------------------

    def start(self, adopt: Mapping[bytes, Adopt]) -> None:
        """Take moved connections from now on: `adopt[kind](sock)` serves each one (e.g.
        loop.connect_accepted_socket with the HTTP or gRPC server's protocol); a kind with no
        entry is closed."""
        path = handoff_path(self.folder, self.slot)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous run of this slot's worker
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)
        receiver.bind(str(path))
        self._receiver, self._adopt = receiver, adopt
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(receiver.fileno(), self._receive)

    def _receive(self) -> None:
        receiver = self._receiver
        assert receiver is not None and self._loop is not None
        while True:
            try:
                kind, descriptors, _, _ = socket.recv_fds(receiver, 16, _MAX_SOCKETS_PER_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("taking a moved connection failed: %s", exc)
                return
            adopt = self._adopt.get(kind)
            for descriptor in descriptors:
                sock = socket.socket(fileno=descriptor)
                if self.stopped or adopt is None:
                    sock.close()
                    self.counts.add_taken()
                    continue
                self.moved_in += 1
                task = self._loop.create_task(adopt(sock))
                self._adopting.add(task)
                task.add_done_callback(functools.partial(self._adopted, sock))

    def _adopted(self, sock: socket.socket, task: asyncio.Task[Any]) -> None:
        self._adopting.discard(task)
        self.counts.add_taken()  # (after its connection_made: it is counted as open too)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.warning("serving a moved connection failed: %s", task.exception())
            sock.close()

    def stop(self) -> None:
        """Move no connection out, take none in (shutdown): those on their way here close."""
        if self.stopped:
            return
        self.stopped = True
        if self._receiver is not None and self._loop is not None:
            self._loop.remove_reader(self._receiver.fileno())
            self._receiver.close()
            with contextlib.suppress(FileNotFoundError):
                handoff_path(self.folder, self.slot).unlink()
        self._sender.close()


class MovesCollector:
    """`ferry_connections_moved_total{protocol}`: the connections this worker moved to their
    models' owner (the supervisor adds up every worker's)."""

    def __init__(self, handoff: ConnectionHandoff) -> None:
        self._handoff = handoff

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ferry_connections_moved",
            "Client connections moved to the worker that runs their model "
            "(--workers N --shared-batching)",
            labels=["protocol"],
        )
        moved = self._handoff.moved_out
        family.add_metric(["http"], moved[HTTP])
        family.add_metric(["grpc"], moved[GRPC])
        yield family
