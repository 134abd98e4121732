"""The drift evaluator process: `python -m monitoring.drift_service ADDRESS [options]`.

Evaluating drift windows (signals, KS distances, p-values) is CPU work in numpy and scipy. On a
thread of the serving process it takes the GIL from the event loop, which shows in the tail
latency at high row rates; so `ferry serve` runs it here, in a process of its own, fed by every
serving process (one, or each worker of `--workers N`): one set of windows per model version
that counts every row once, whichever process served it.

Feeders (monitoring/drift_remote.py) connect over a Unix socket in a private folder and
authenticate with the key in the FERRY_DRIFT_AUTHKEY environment variable
(multiprocessing.connection's HMAC handshake; messages are pickles, so only holders of the key
may connect). Each feeder sends model events, stacked rows, the shared-memory rings its event
loop writes rows into (monitoring/drift_ring.py; read here on every pass) and snapshot
requests, in order, on its own connection. A model version is monitored while at least one
feeder has it READY; its windows survive a feeder that reloads it or restarts, unless its
folder or reference changed. The process ends when its parent does, or when a feeder sends "close".
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import threading
from multiprocessing.connection import Connection, Listener, Pipe, wait
from pathlib import Path
from typing import Any

from monitoring.drift import DriftMonitor
from monitoring.drift_ring import RingLayout, RingReader
from monitoring.observer import ModelEventRecord
from monitoring.reference import REFERENCE_FILENAME

log = logging.getLogger("ferry.monitoring.drift")
AUTHKEY_ENV = "FERRY_DRIFT_AUTHKEY"
NICENESS = 10
MAX_LOG_LINES = 1000  # log lines kept for the feeder that prints them, oldest dropped first
Key = tuple[str, str]
LogLine = tuple[str, int, str]  # logger name, level, message


class _LogBuffer(logging.Handler):
    """Keeps this process's drift log lines until a feeder takes them (it prints them in its
    own log format, with the server's severity switches)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[LogLine] = collections.deque(maxlen=MAX_LOG_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.name, record.levelno, message))

    def take(self) -> list[LogLine]:
        lines = list(self.lines)
        self.lines.clear()
        return lines


def _identity(event: ModelEventRecord) -> tuple[Any, ...]:
    """What makes a READY version the same one again: its folder and its reference file."""
    if not event.version_path:
        return (None, None)
    try:
        stat = (Path(event.version_path) / REFERENCE_FILENAME).stat()
        return (event.version_path, (stat.st_mtime_ns, stat.st_size))
    except OSError:
        return (event.version_path, None)


class DriftService:
    """One drift engine and the feeders' connections."""

    def __init__(self, engine: DriftMonitor, poll_s: float = 0.2) -> None:
        self.engine, self.poll_s = engine, poll_s
        self.connections: dict[int, Connection] = {}
        self.holders: dict[Key, set[int]] = {}
        self.identities: dict[Key, tuple[Any, ...]] = {}
        self.rings: dict[tuple[int, Key], RingReader] = {}
        # rows dropped: each feeder's running count, and what feeders gone or restarted had
        self.dropped: dict[tuple[int, Key], int] = {}
        self.dropped_before: dict[Key, int] = {}
        self.logs = _LogBuffer()
        logging.getLogger("ferry").addHandler(self.logs)
        logging.getLogger("ferry").setLevel(logging.INFO)
        self._next_id = 0
        self._accepted: list[Connection] = []
        self._accepted_lock = threading.Lock()
        self._stopping = False

    # --- connections ----------------------------------------------------------------------------

    def serve(self, listener: Listener, parent_pid: int) -> None:
        """Answer feeders until the parent process is gone or a feeder says close."""
        wake_reader, wake_writer = Pipe(duplex=False)
        threading.Thread(
            target=self._accept, args=(listener, wake_writer), name="drift-accept", daemon=True
        ).start()
        while not self._stopping and os.getppid() == parent_pid:
            for ready in wait([wake_reader, *self.connections.values()], self.poll_s):
                if ready is wake_reader:
                    wake_reader.recv_bytes()
                    self._join_accepted()
                else:
                    assert isinstance(ready, Connection)
                    self._receive(ready)
            self.read_rings(settled=True)
            self.engine.step()  # versions to load, stale windows
        listener.close()

    def _accept(self, listener: Listener, wake: Connection) -> None:
        while True:
            try:
                connection = listener.accept()
            except OSError:  # the listener closed
                return
            except Exception:  # a peer without the key, or one that hung up mid-handshake
                continue
            with self._accepted_lock:
                self._accepted.append(connection)
            wake.send_bytes(b"")

    def _join_accepted(self) -> None:
        with self._accepted_lock:
            accepted, self._accepted = self._accepted, []
        for connection in accepted:
            self._next_id += 1
            self.connections[self._next_id] = connection

    def _receive(self, connection: Connection) -> None:
        feeder = next(i for i, c in self.connections.items() if c is connection)
        try:
            message = connection.recv()
            reply = self.handle(feeder, message)
            if reply is not None:
                connection.send(reply)
        except (EOFError, OSError):
            self.disconnect(feeder)

    def disconnect(self, feeder: int) -> None:
        """A feeder went away: it holds no model version any more."""
        connection = self.connections.pop(feeder, None)
        if connection is not None:
            connection.close()
        for key in [k for k, held in self.holders.items() if feeder in held]:
            self._release(feeder, key)
        for ring in [r for r in self.rings if r[0] == feeder]:
            del self.rings[ring]
        for counted in [d for d in self.dropped if d[0] == feeder]:
            del self.dropped[counted]  # of versions it no longer held (_release kept the rest)

    # --- rows -----------------------------------------------------------------------------------

    def read_rings(self, settled: bool, feeder: int | None = None) -> None:
        """Evaluate the rows the feeders' event loops wrote into their rings (one feeder's
        only, unsettled, when its message has just ordered them before this read)."""
        for (owner, key), ring in list(self.rings.items()):
            inputs, outputs, rows = ring.take(settled and owner != feeder)
            if rows:
                self._offer(owner, key, inputs, outputs, rows, None, 0)

    def _offer(
        self,
        feeder: int,
        key: Key,
        inputs: Any,
        outputs: Any,
        rows: int,
        dropped: int | None,
        skipped: int,
    ) -> None:
        """Rows for the engine, with the dropped rows of every feeder of this version."""
        if dropped is not None:
            had = self.dropped.get((feeder, key), 0)
            if dropped < had:  # the feeder's count started again (it reloaded the version)
                self.dropped_before[key] = self.dropped_before.get(key, 0) + had
            self.dropped[(feeder, key)] = dropped
        total = self.dropped_before.get(key, 0)
        total += sum(n for (_, k), n in self.dropped.items() if k == key)
        self.engine.offer_rows(key[0], key[1], inputs, outputs, rows, total, skipped)

    def _ring(self, feeder: int, key: Key, layout: RingLayout, path: str) -> None:
        try:
            self.rings[(feeder, key)] = RingReader(layout, path)
        except OSError as exc:  # its rows are lost: say so
            log.warning("cannot read the drift rows of %s/%s: %s", key[0], key[1], exc)

    # --- messages -------------------------------------------------------------------------------

    def handle(self, feeder: int, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Apply one feeder message; the reply to send back, if any."""
        kind = message[0]
        if kind == "event":
            self._event(feeder, message[1])
        elif kind == "rows":
            _, model, version, inputs, outputs, rows, dropped, skipped = message
            self._offer(feeder, (model, version), inputs, outputs, rows, dropped, skipped)
        elif kind == "ring":
            _, model, version, layout, path = message
            self._ring(feeder, (model, version), layout, path)
        elif kind == "snapshot":
            self.read_rings(settled=True, feeder=feeder)
            self.engine.step()
            logs = self.logs.take() if feeder == min(self.connections, default=feeder) else []
            return ("snapshot", self.engine.snapshot(), logs)
        elif kind == "close":
            self._stopping = True
        return None

    def _event(self, feeder: int, event: ModelEventRecord) -> None:
        key = (event.model, event.version)
        if event.state == "READY":
            identity = _identity(event)
            held = self.holders.get(key)
            if held is not None and self.identities.get(key) == identity:
                held.add(feeder)  # another feeder (or the same, reloaded): keep its windows
                return
            self.holders[key], self.identities[key] = {feeder}, identity
            self.engine.observe(event)
            self.engine.step()  # load it before the rows that follow
        elif key in self.holders:
            self._release(feeder, key)
        if event.state != "READY":
            self.rings.pop((feeder, key), None)

    def _release(self, feeder: int, key: Key) -> None:
        held = self.holders.get(key)
        if held is None:
            return
        held.discard(feeder)
        had = self.dropped.pop((feeder, key), 0)  # kept while the version is monitored: a
        self.dropped_before[key] = self.dropped_before.get(key, 0) + had  # count never goes down
        if not held:
            del self.holders[key]
            self.identities.pop(key, None)
            self.dropped_before.pop(key, None)
            for counted in [d for d in self.dropped if d[1] == key]:
                del self.dropped[counted]
            self.engine.observe(ModelEventRecord(key[0], key[1], "UNAVAILABLE"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.drift_service")
    parser.add_argument("address", help="Unix socket path to listen on")
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--baseline-samples", type=int, default=0)
    parser.add_argument("--max-window-age-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    # the serving processes come first when the CPUs are busy: a drift evaluation that falls
    # behind drops rows (counted in ferry_drift_dropped_rows_total), a request never waits.
    # Not SCHED_IDLE: under a load that keeps every CPU busy it would stop monitoring
    # altogether, and on 2 cores it gave no better p99 than nice 10 (bench.tail_latency)
    os.nice(NICENESS)
    engine = DriftMonitor(
        True, args.window, args.alpha, args.baseline_samples, args.max_window_age_s
    )
    service = DriftService(engine)
    parent = os.getppid()
    with Listener(args.address, family="AF_UNIX", authkey=authkey) as listener:
        service.serve(listener, parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
