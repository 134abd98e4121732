"""Drift evaluated in another process: the serving side's feeder, and the process it feeds.

`RemoteDriftMonitor` is the observer a serving process installs instead of the in-process
`DriftMonitor`. Its `observe` runs on the event loop. When the tensors a model version's signals
read have fixed row shapes (known from its reference.npz as soon as it is READY, or from the
evaluator), it copies the request's rows into a shared-memory ring the evaluator reads
(monitoring/drift_ring.py): nothing else in the serving process touches them. Until then, and
for tensors that vary in shape, it appends the request's arrays to a bounded intake (as the
in-process monitor does), and a feeder thread stacks the queued rows and sends them over the
evaluator's socket (monitoring/drift_service.py). The feeder thread also asks the evaluator for
a snapshot of every model version's families and detail, which `families` and `detail` then
read without waiting. So the event loop never computes a signal, a KS distance or a p-value, and
a scrape or a drift read never waits for an evaluation.

`DriftServiceProcess` starts the evaluator and starts it again when it has died. Its owner is the
server (one process) or the supervisor of `--workers N` (one evaluator for every worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.drift import DriftSnapshot, pick_detail
from monitoring.drift_intake import Item, RowIntake, pending_rows_for, stack_groups
from monitoring.drift_ring import RingWriter, ring_layout, sweep_orphans
from monitoring.drift_service import AUTHKEY_ENV
from monitoring.families import Family
from monitoring.observer import ModelEventRecord, ObservedRecord, RequestRecord
from monitoring.polling_thread import PollingThread
from monitoring.reference import REFERENCE_FILENAME, signal_tensors

log = logging.getLogger("ferry.monitoring.drift")

# a snapshot costs the evaluator the last window's p-values and every series: twice a second
# is enough for Prometheus scrapes (every 15 s by default) and drift reads
SNAPSHOT_INTERVAL_S = 0.5
SNAPSHOT_TIMEOUT_S = 30.0  # a first snapshot may wait for a reference to load and calibrate
STOP_TIMEOUT_S = 5.0
UNREACHABLE_GRACE_S = 10.0
Key = tuple[str, str]


@dataclass(frozen=True)
class DriftServiceAddress:
    """Where the evaluator listens and the key that lets a feeder in."""

    path: str
    authkey: bytes


@dataclass(frozen=True)
class DriftSettings:
    """The evaluator's settings (`ferry serve --drift-*`)."""

    window: int = 1000
    alpha: float = 0.05
    baseline_samples: int = 0
    max_window_age_s: float = 600.0


class DriftServiceProcess:
    """The evaluator process: started on demand, started again after it died."""

    def __init__(self, settings: DriftSettings, folder: Path | None = None) -> None:
        self.settings = settings
        self._own_folder = folder is None
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="ferry-"))
        self.address = DriftServiceAddress(str(self.folder / "drift.sock"), secrets.token_bytes(32))
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.starts = 0

    def ensure_running(self) -> bool:
        """Start the evaluator if it is not running; True when this call started it."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return False
            if self._process is not None:
                log.warning(
                    "the drift evaluator (pid %d) exited with %s; starting it again",
                    self._process.pid,
                    self._process.returncode,
                )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)
            settings = self.settings
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "monitoring.drift_service",
                    self.address.path,
                    f"--window={settings.window}",
                    f"--alpha={settings.alpha!r}",
                    f"--baseline-samples={settings.baseline_samples}",
                    f"--max-window-age-s={settings.max_window_age_s!r}",
                ],
                env={**os.environ, AUTHKEY_ENV: self.address.authkey.hex()},
                stdin=subprocess.DEVNULL,
            )
            self.starts += 1
            return True

    @property
    def pid(self) -> int | None:
        """The running evaluator's process id."""
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    def stop(self) -> None:
        """End the evaluator (SIGTERM, then SIGKILL) and remove its folder if this made it."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Feed:
    """One model version's rows on their way to the evaluator."""

    def __init__(self, event: ModelEventRecord, max_rows: int, sample_rate: float) -> None:
        self.event = event
        self.has_row_axis = event.max_batch_size > 0
        self.intake = RowIntake(max_rows, sample_rate=sample_rate)
        self.monitored = True  # until a snapshot says the evaluator does not monitor it
        self.tensors: tuple[tuple[str, str], ...] | None = None  # what its signals read
        self.reference_tensors: tuple[tuple[str, str], ...] | None = None
        self.reference_read = False  # reference_tensors looked up (once, by the feeder thread)
        self.ring: RingWriter | None = None  # set by the feeder thread, written by the loop
        self.ring_tensors: tuple[tuple[str, str], ...] | None = None  # what it was made for
        self.ring_announced = False  # the evaluator has been told to map it
        self.ring_dropped = 0  # rows the ring had no room for
        self.dropped_sent = 0

    def offer(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], rows: int
    ) -> bool:
        """Take a request's rows if the sample does: into the ring when it fits, else into the
        intake; True when the feeder thread should run a pass now."""
        if not self.intake.sampled():
            return False
        ring = self.ring
        if ring is not None:
            written = ring.write(inputs, outputs, rows, self.has_row_axis)
            if written is not None:
                if not written:
                    self.ring_dropped += rows
                return False
        return self.intake.queue(inputs, outputs, rows, self.has_row_axis)

    @property
    def dropped_rows(self) -> int:
        return self.intake.dropped_rows + self.ring_dropped

    def signal_tensors(self) -> tuple[tuple[str, str], ...] | None:
        """What the signals read: as the evaluator said, else as the reference file says."""
        if self.tensors is not None:
            return self.tensors
        if not self.reference_read and self.event.version_path:
            self.reference_tensors = signal_tensors(
                Path(self.event.version_path) / REFERENCE_FILENAME
            )
        self.reference_read = True
        return self.reference_tensors

    def close_ring(self) -> None:
        """Stop writing to the ring (rows go to the intake) and remove its file if it is left;
        the next pass may make another."""
        ring, self.ring = self.ring, None
        self.ring_tensors, self.ring_announced = None, False
        if ring is not None:
            ring.unlink()


def _names(
    items: list[Item], tensors: tuple[tuple[str, str], ...] | None
) -> tuple[tuple[str, str], ...]:
    """The tensors the signals read; every tensor of the first request while not known yet."""
    return tensors or tuple(
        [("inputs", n) for n in items[0][0]] + [("outputs", n) for n in items[0][1]]
    )


class RemoteDriftMonitor:
    """The drift observer of a serving process whose windows are evaluated elsewhere."""

    def __init__(
        self,
        address: DriftServiceAddress,
        window: int,
        process: DriftServiceProcess | None = None,
        poll_s: float = 0.2,
        sample_rate: float = 1.0,
    ) -> None:
        self.address, self.window, self.process, self.poll_s = address, window, process, poll_s
        self.sample_rate = sample_rate  # of requests queued (RowIntake)
        self._feeds: dict[Key, _Feed] = {}
        self._events: list[ModelEventRecord] = []
        self._lock = threading.Lock()
        self._thread = PollingThread("ferry-drift-feed", self._pass, poll_s)
        self._connection: Connection | None = None
        self._snapshot = DriftSnapshot()
        self._snapshot_at = 0.0
        self._snapshot_asked_at: float | None = None  # a snapshot asked for and not yet read
        self._step_lock = threading.Lock()  # one pass at a time on the connection
        self._warned = False
        self._unreachable_since: float | None = None

    # --- the event loop's side ------------------------------------------------------------------

    def observe(self, record: ObservedRecord) -> None:
        """Queue the rows of a successful request; note model versions' state changes."""
        try:
            if isinstance(record, RequestRecord):
                if record.success and record.outputs is not None:
                    feed = self._feeds.get((record.model, record.version))
                    if (
                        feed is not None
                        and feed.monitored
                        and feed.offer(
                            record.inputs or {}, record.outputs, max(1, record.batch_size)
                        )
                    ):
                        self._thread.wake()
            elif isinstance(record, ModelEventRecord):
                self._on_event(record)
        except Exception:  # an observer never raises into the server
            log.exception("drift monitor failed to observe a record")

    def _on_event(self, event: ModelEventRecord) -> None:
        key = (event.model, event.version)
        with self._lock:
            gone = self._feeds.pop(key, None)
            if gone is not None:
                gone.close_ring()
            if event.state == "READY":
                self._feeds[key] = _Feed(event, pending_rows_for(self.window), self.sample_rate)
            elif gone is None:
                return
            self._events.append(event)
        self._thread.wake()

    def detail(self, model: str, version: str | None) -> dict[str, Any] | None:
        """The evaluator's last JSON detail of a model version (latest version when None)."""
        details = self._snapshot.details
        return pick_detail({k: d for k, d in details.items() if k in self._feeds}, model, version)

    def families(self) -> list[Family]:
        """The evaluator's last drift families."""
        return self._snapshot.families

    # --- the feeder thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the evaluator (when this monitor owns it) and the feeder thread."""
        sweep_orphans()
        if self.process is not None:
            with contextlib.suppress(OSError):  # the feeder thread tries again, and says why
                self.process.ensure_running()
        self._thread.start()

    def close(self) -> None:
        """Stop the feeder thread, and the evaluator when this monitor owns it."""
        self._thread.stop()
        for feed in list(self._feeds.values()):
            feed.close_ring()
        if self._connection is not None:
            if self.process is not None:
                with contextlib.suppress(OSError):
                    self._connection.send(("close",))
            self._connection.close()
            self._connection = None
        if self.process is not None:
            self.process.stop()

    def _pass(self) -> None:
        """The feeder thread's pass: rows every time, a snapshot asked for every
        SNAPSHOT_INTERVAL_S and read in a later pass, once it has come: the feeder never waits
        for the evaluator (at nice 10 on busy CPUs it may answer late, and rows queued meanwhile
        would be dropped)."""
        now = time.monotonic()
        due = now - self._snapshot_at >= SNAPSHOT_INTERVAL_S or bool(self._events)
        if due:
            self._snapshot_at = now
        self.step(snapshot=due, wait=False)

    def step(self, snapshot: bool = True, wait: bool = True) -> None:
        """One feeder pass: connect if needed, send events and rows, and take a snapshot (when
        `snapshot`): wait for it (`wait`), or ask for it and read it in a later pass."""
        with self._step_lock:
            self._step(snapshot, wait)

    def _step(self, snapshot: bool, wait: bool) -> None:
        self._make_rings()  # before connecting: rows wait in them while the evaluator starts
        connection = self._connection or self._connect()
        if connection is None:
            return
        try:
            self._read_snapshot(connection, timeout=0.0)
            with self._lock:
                events, self._events = self._events, []
            for event in events:
                connection.send(("event", event))
            for (model, version), feed in list(self._feeds.items()):
                if feed.ring is not None and not feed.ring_announced:
                    connection.send(("ring", model, version, feed.ring.layout, feed.ring.path))
                    feed.ring_announced = True
                dropped = feed.dropped_rows
                items = feed.intake.take()
                groups, skipped = (
                    stack_groups(items, _names(items, feed.tensors)) if items else ([], 0)
                )
                for inputs, outputs, rows in groups:
                    connection.send(
                        ("rows", model, version, inputs, outputs, rows, dropped, skipped)
                    )
                    skipped = 0
                if (not groups and dropped != feed.dropped_sent) or skipped:
                    connection.send(("rows", model, version, {}, {}, 0, dropped, skipped))
                feed.dropped_sent = dropped
            if snapshot and self._snapshot_asked_at is None:
                connection.send(("snapshot",))
                self._snapshot_asked_at = time.monotonic()
            if wait:
                self._read_snapshot(connection, timeout=SNAPSHOT_TIMEOUT_S)
            asked = self._snapshot_asked_at
            if asked is not None and time.monotonic() - asked > SNAPSHOT_TIMEOUT_S:
                raise TimeoutError("the drift evaluator did not answer")
        except (OSError, EOFError, TimeoutError) as exc:
            self._lost(exc)

    def _make_rings(self) -> None:
        """Give each monitored model version whose signals' tensors are known a ring for them
        (once per set of tensors: refused when they vary in shape or /dev/shm is full)."""
        for (model, version), feed in list(self._feeds.items()):
            if not feed.monitored:
                continue
            tensors = feed.signal_tensors()
            if tensors is None or tensors == feed.ring_tensors:
                continue
            feed.close_ring()
            feed.ring_tensors = tensors
            layout = ring_layout(feed.event, tensors, self.window)
            if layout is None:
                continue
            try:
                feed.ring = RingWriter(layout)
            except OSError as exc:
                log.warning("drift rows of %s/%s take the socket: %s", model, version, exc)

    def _read_snapshot(self, connection: Connection, timeout: float) -> None:
        """Take the snapshot asked for when it has come (within `timeout`; one is asked for at
        a time, and the evaluator answers in order)."""
        if self._snapshot_asked_at is None:
            return
        if not connection.poll(timeout):
            if timeout > 0:
                raise TimeoutError("the drift evaluator did not answer")
            return
        _, taken, lines = connection.recv()
        self._snapshot_asked_at = None
        self._take_snapshot(taken)
        for name, level, message in lines:
            logging.getLogger(name).log(level, "%s", message)

    def _take_snapshot(self, snapshot: DriftSnapshot) -> None:
        for key, feed in list(self._feeds.items()):
            detail = snapshot.details.get(key)
            if detail is not None:
                feed.monitored = detail["state"] != "disabled"
                feed.tensors = snapshot.tensors.get(key)
                if not feed.monitored:
                    feed.close_ring()
        self._snapshot = snapshot

    def _connect(self) -> Connection | None:
        if self.process is not None:
            try:
                self.process.ensure_running()
            except OSError as exc:
                self._unreachable(exc)
                return None
            deadline = time.monotonic() + 30  # a new process imports numpy and scipy first
            while not os.path.exists(self.address.path) and time.monotonic() < deadline:
                if self._thread.stopping.wait(0.05):
                    return None
        try:
            connection = Client(self.address.path, family="AF_UNIX", authkey=self.address.authkey)
        except (OSError, EOFError) as exc:
            self._unreachable(exc)
            return None
        self._connection, self._warned, self._unreachable_since = connection, False, None
        with self._lock:  # a new evaluator knows nothing: every ready version, then what changed
            ready = [feed.event for feed in self._feeds.values()]
            self._events = ready
        return connection

    def _unreachable(self, exc: BaseException) -> None:
        """Say so once it has lasted UNREACHABLE_GRACE_S (a worker may start before the
        evaluator listens), once until it is reached; rows meanwhile are dropped and counted."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        if not self._warned and now - self._unreachable_since >= UNREACHABLE_GRACE_S:
            log.warning("cannot reach the drift evaluator: %s", exc)
            self._warned = True

    def _lost(self, exc: BaseException) -> None:
        log.warning("lost the drift evaluator (%s); reconnecting", exc or type(exc).__name__)
        if self._connection is not None:
            self._connection.close()
        self._connection, self._snapshot_asked_at = None, None
        for feed in list(self._feeds.values()):  # a new evaluator gets new rings
            feed.close_ring()


def feeder_for(
    address: DriftServiceAddress | None, settings: DriftSettings, sample_rate: float = 1.0
) -> RemoteDriftMonitor:
    """The serving process's drift observer: fed to a shared evaluator when `address` is given
    (a worker of `--workers N`), else to an evaluator of its own."""
    if address is not None:
        return RemoteDriftMonitor(address, settings.window, sample_rate=sample_rate)
    process = DriftServiceProcess(settings)
    return RemoteDriftMonitor(process.address, settings.window, process, sample_rate=sample_rate)
