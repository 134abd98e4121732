"""Under `ferry serve --workers N --shared-batching`: an idle HTTP/1.1 connection moves to the
worker that owns the model it calls.

With one batcher per model (server/workers/remote_model.py), a request that reaches a worker
other than its model's owner makes a round trip to the owner: two more process wake-ups, and the
request and its answer pickled. At concurrency 1 on a 2-core machine that is about 0.25 ms on
top of the 0.25 ms p50 the owner answers in. So when a keep-alive connection goes idle after an
infer request of a model another worker owns, and that worker holds no HTTP connection, the
connection's socket is passed to it (SCM_RIGHTS over a Unix datagram socket in the supervisor's
private folder) and served there from its next request on.

- A single client (concurrency 1) ends up in its model's owner: no hop at all.
- Many connections stay where the kernel spread them, so the protocol work still uses every
  core. (A rule that moved connections while the owner held fewer than the worker they were
  in overshot under wrk's 64 connections opened at once, moves not yet counted anywhere: 50 in
  the owner and 14 in the other worker. The owner also runs the model, so it should hold
  fewer, not more.)
- A connection moves between requests only: its last response written out in full, nothing
  read and left unparsed. The client's next bytes wait in the kernel for the new worker.
- A connection moves at most once, so one that calls models of several owners does not bounce.
- gRPC connections (HTTP/2) do not move: their compression state and streams belong to the
  worker that accepted them.
- When the owner's queue of incoming sockets is full, or the owner is not running, the
  connection stays where it is.
- A socket on its way to a worker that exits before taking it is closed, like that worker's
  own idle connections. An idle keep-alive connection may be closed at any time (RFC 9112
  9.6); clients retry on a fresh one.

Each worker publishes its count of open HTTP connections in a small shared file (one 64-bit
slot per worker, each written by its own worker only), which the others read to decide.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import logging
import mmap
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("ferry.workers")

COUNTS_FILE = "http-connections"
_SLOT_BYTES = 8
_MAX_SOCKETS_PER_MESSAGE = 4  # one is sent per message; more would be closed, not leaked
# (model, version) -> the slot of the worker that runs it for this one, or None
OwnerOf = Callable[[str, str], int | None]


def handoff_path(folder: Path, slot: int) -> Path:
    """Where worker `slot` takes the connections moved to it."""
    return folder / f"handoff-{slot}.sock"


class ConnectionCounts:
    """The open HTTP connections of every worker, in a file each worker maps."""

    def __init__(self, folder: Path, workers: int, slot: int) -> None:
        self.slot = slot
        size = workers * _SLOT_BYTES
        descriptor = os.open(folder / COUNTS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < size:  # (the first worker to start sizes it)
                os.ftruncate(descriptor, size)
            self._map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._counts = memoryview(self._map).cast("q")
        self._counts[slot] = 0  # a restarted worker: its predecessor's connections are gone

    def add(self, change: int) -> None:
        self._counts[self.slot] += change

    def __getitem__(self, slot: int) -> int:
        return int(self._counts[slot])

    def close(self) -> None:
        self._counts.release()
        self._map.close()


class ConnectionHandoff:
    """This worker's end of the moves (see the module's docstring): decides, sends, adopts."""

    def __init__(self, folder: Path, workers: int, slot: int, owner_of: OwnerOf) -> None:
        self.folder, self.slot, self._owner_of = folder, slot, owner_of
        self.counts = ConnectionCounts(folder, workers, slot)
        self.moved_out = self.moved_in = 0
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._receiver: socket.socket | None = None
        self._adopt: Callable[[socket.socket], Any] | None = None
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
        if self.stopped:
            return None
        owner = self._owner_of(model, version)
        if owner is None or owner == self.slot or self.counts[owner] > 0:
            return None
        return owner

    def send(self, descriptor: int, slot: int) -> bool:
        """Pass the socket `descriptor` to worker `slot`; False when it cannot take it now
        (its queue is full, or it is not running). The caller closes its own descriptor."""
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [descriptor]))]
        try:
            # (socket.send_fds would do, but it drops its address argument: CPython 3.11)
            self._sender.sendmsg([b"c"], rights, 0, str(handoff_path(self.folder, slot)))
        except OSError:  # BlockingIOError: its queue is full; else it is not listening
            return False
        self.moved_out += 1
        return True

    # --- the connections moved to this worker --------------------------------------------------

    def start(self, adopt: Callable[[socket.socket], Any]) -> None:
        """Take moved connections from now on: `adopt(sock)` serves each one (a coroutine
        function, e.g. loop.connect_accepted_socket with the HTTP server's protocol)."""
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
        assert receiver is not None and self._adopt is not None and self._loop is not None
        while True:
            try:
                _, descriptors, _, _ = socket.recv_fds(receiver, 16, _MAX_SOCKETS_PER_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("taking a moved connection failed: %s", exc)
                return
            for descriptor in descriptors:
                sock = socket.socket(fileno=descriptor)
                if self.stopped:
                    sock.close()
                    continue
                self.moved_in += 1
                task = self._loop.create_task(self._adopt(sock))
                self._adopting.add(task)
                task.add_done_callback(functools.partial(self._adopted, sock))

    def _adopted(self, sock: socket.socket, task: asyncio.Task[Any]) -> None:
        self._adopting.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.warning("serving a moved connection failed: %s", task.exception())
            sock.close()

    def stop(self) -> None:
        """Move no connection out, take none in (shutdown): those on their way here close."""
        self.stopped = True
        if self._receiver is not None and self._loop is not None:
            self._loop.remove_reader(self._receiver.fileno())
            self._receiver.close()
            with contextlib.suppress(FileNotFoundError):
                handoff_path(self.folder, self.slot).unlink()
        self._sender.close()
