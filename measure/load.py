"""The load loop: keep N requests outstanding (concurrency) or send R requests a second (rate).

Everything runs in callbacks on one event loop: a response's callback records it and, in
concurrency mode, writes the next pre-encoded request on the same connection at once. Records
are three flat arrays (completion time, latency, status) that the measurement windows slice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from measure import grpc_client, http_client
from measure.requests import RequestSet, Sequence

MAX_GRPC_CONNECTIONS = 8  # concurrency mode spreads its streams over at most this many
RATE_MAX_CONNECTIONS = 1024  # request-rate mode opens connections up to this, then queues
RECONNECT_DELAY_S = 0.05


@dataclass
class Records:
    """Every completed request: when it ended, how long it took, its status."""

    ends: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: array[int] = field(default_factory=lambda: array("i"))
    messages: dict[int, str] = field(default_factory=dict)  # first error text per status
    sent: int = 0
    delayed: int = 0  # rate mode: sends that found every connection busy

    def add(self, end: float, latency: float, status: int, body: bytes, ok: bool) -> None:
        self.ends.append(end)
        self.latencies.append(latency)
        self.statuses.append(status)
        if not ok and status not in self.messages:
            self.messages[status] = body[:300].decode(errors="replace")


class _SequenceSlot:
    """One client's stream of sequences: ids, start and end flags (concurrency mode only)."""

    def __init__(self, ids: itertools.count[int], length: int) -> None:
        self.ids, self.length = ids, length
        self.sequence_id, self.position = next(ids), 0

    def next(self) -> Sequence:
        if self.position == self.length:
            self.sequence_id, self.position = next(self.ids), 0
        self.position += 1
        return Sequence(self.sequence_id, self.position == 1, self.position == self.length)


class LoadGenerator:
    """Drives one load level against one server; `records` grows while it runs."""

    def __init__(
        self,
        requests: RequestSet,
        host: str,
        port: int,
        sequence_length: int = 0,
        sequence_id_start: int = 1,
    ) -> None:
        self.requests, self.host, self.port = requests, host, port
        self.grpc = requests.protocol == "grpc"
        self.ok_status = 0 if self.grpc else 200
        self.records = Records()
        self.running = False
        self.outstanding = 0
        self._cycle = itertools.cycle(range(len(requests)))
        self._sequence_length = sequence_length
        self._sequence_ids = itertools.count(sequence_id_start)
        self._http: list[http_client.HttpConnection] = []
        self._grpc: list[grpc_client.GrpcConnection] = []
        self._idle: list[http_client.HttpConnection] = []
        self._backlog = 0
        self._opening = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Event | None = None

    # --- shared ------------------------------------------------------------------------------
    def _payload(self, slot: object) -> bytes:
        index = next(self._cycle)
        if isinstance(slot, _SequenceSlot):
            return self.requests.payload(index, slot.next())
        return self.requests.payload(index)

    def _record(self, status: int, body: bytes, sent_at: float) -> None:
        now = time.perf_counter()
        self.outstanding -= 1
        self.records.add(now, now - sent_at, status, body, status == self.ok_status)
        if self.outstanding == 0 and not self.running and self._drained is not None:
            self._drained.set()

    def _connect_failed(self, status: int, exc: BaseException) -> None:
        """A connection that could not be opened fails the request it was opened for."""
        self.records.sent += 1
        self.outstanding += 1
        self._record(status, str(exc).encode(), time.perf_counter())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slot(self) -> object:
        return (
            _SequenceSlot(self._sequence_ids, self._sequence_length)
            if self._sequence_length
            else None
        )

    # --- concurrency mode --------------------------------------------------------------------
    async def start_concurrency(self, concurrency: int) -> None:
        """Open the connections and put `concurrency` requests in flight."""
        self.running = True
        if self.grpc:
            count = min(concurrency, MAX_GRPC_CONNECTIONS)
            self._grpc = list(
                await asyncio.gather(
                    *(
                        grpc_client.connect(self.host, self.port, self._grpc_answered)
                        for _ in range(count)
                    )
                )
            )
            for index in range(concurrency):
                self._grpc_send(self._grpc[index % count], self._slot() or object())
            return
        connections = await asyncio.gather(
            *(
                http_client.connect(self.host, self.port, self._http_answered)
                for _ in range(concurrency)
            )
        )
        self._http = list(connections)
        for connection in self._http:
            connection.tag = self._slot()
            self._http_send(connection)

    def _http_send(self, connection: http_client.HttpConnection) -> None:
        self.outstanding += 1
        self.records.sent += 1
        connection.send(self._payload(connection.tag))

    def _http_answered(
        self, connection: http_client.HttpConnection, status: int, body: bytes
    ) -> None:
        self._record(status, body, connection.sent_at)
        if not self.running:
            return
        if status == http_client.CONNECTION_ERROR or connection.transport is None:
            self._spawn(self._http_replace(connection))
        elif connection.tag == "rate":
            self._rate_http_free(connection)
        else:
            self._http_send(connection)

    async def _http_replace(self, connection: http_client.HttpConnection) -> None:
        """A connection failed: open another after a pause (a dead server is not hammered)."""
        if connection in self._http:
            self._http.remove(connection)
        await asyncio.sleep(RECONNECT_DELAY_S)
        if not self.running:
            return
        try:
            fresh = await http_client.connect(self.host, self.port, self._http_answered)
        except OSError as exc:
            self._connect_failed(http_client.CONNECTION_ERROR, exc)
            self._spawn(self._http_replace(connection))
            return
        fresh.tag = connection.tag
        self._http.append(fresh)
        if fresh.tag == "rate":
            self._rate_http_free(fresh)
        else:
            self._http_send(fresh)

    def _grpc_send(self, connection: grpc_client.GrpcConnection, slot: object) -> None:
        if not connection.usable:
            usable = [c for c in self._grpc if c.usable]
            if not usable:
                self._spawn(self._grpc_reconnect(slot))
                return
            connection = min(usable, key=lambda c: c.active)
        self.outstanding += 1
        self.records.sent += 1
        connection.call(self.requests.grpc_headers, self._payload(slot), slot)

    def _grpc_answered(
        self,
        connection: grpc_client.GrpcConnection,
        slot: object,
        status: int,
        body: bytes,
        sent_at: float,
    ) -> None:
        self._record(status, body, sent_at)
        if not self.running:
            return
        if slot == "rate":
            if self._backlog:
                self._backlog -= 1
                self._grpc_rate_send()
        else:
            self._grpc_send(connection, slot)

    async def _grpc_reconnect(self, slot: object) -> None:
        await asyncio.sleep(RECONNECT_DELAY_S)
        if not self.running:
            return
        try:
            connection = await grpc_client.connect(self.host, self.port, self._grpc_answered)
        except (OSError, TimeoutError) as exc:
            self._connect_failed(grpc_client.UNAVAILABLE, exc)
            self._spawn(self._grpc_reconnect(slot))
            return
        self._grpc = [c for c in self._grpc if c.usable] + [connection]
        self._grpc_send(connection, slot)

    # --- request-rate mode -------------------------------------------------------------------
    async def run_rate(self, rate: float, distribution: str, seed: int = 0) -> None:
        """Send at `rate` requests/s until `stop`; sends that find no free connection wait."""
        self.running = True
        rng = random.Random(seed)
        interval = 1.0 / rate
        next_at = time.perf_counter()
        while self.running:
            now = time.perf_counter()
            while next_at <= now and self.running:
                if self.grpc:
                    self._grpc_rate_send()
                else:
                    self._rate_http_dispatch()
                next_at += rng.expovariate(rate) if distribution == "poisson" else interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def _rate_http_dispatch(self) -> None:
        if self._idle:
            self._http_send(self._idle.pop())
        elif len(self._http) + self._opening < RATE_MAX_CONNECTIONS:
            self._opening += 1
            self._backlog += 1
            self._spawn(self._rate_http_open())
        else:
            self.records.delayed += 1
            self._backlog += 1

    async def _rate_http_open(self) -> None:
        try:
            connection = await http_client.connect(self.host, self.port, self._http_answered)
        except OSError as exc:
            self._opening -= 1
            self._backlog -= 1
            self._connect_failed(http_client.CONNECTION_ERROR, exc)
            return
        self._opening -= 1
        connection.tag = "rate"
        self._http.append(connection)
        self._rate_http_free(connection)

    def _rate_http_free(self, connection: http_client.HttpConnection) -> None:
        if self._backlog and self.running:
            self._backlog -= 1
            self._http_send(connection)
        else:
            self._idle.append(connection)

    def _grpc_rate_send(self) -> None:
        free = [c for c in self._grpc if c.usable and c.active < c.max_streams]
        if free:
            connection = min(free, key=lambda c: c.active)
            self.outstanding += 1
            self.records.sent += 1
            connection.call(self.requests.grpc_headers, self._payload(None), "rate")
        elif len(self._grpc) + self._opening < MAX_GRPC_CONNECTIONS * 8:
            self._opening += 1
            self._spawn(self._grpc_rate_open())
        else:
            self.records.delayed += 1
            self._backlog += 1

    async def _grpc_rate_open(self) -> None:
        try:
            connection = await grpc_client.connect(self.host, self.port, self._grpc_answered)
            self._grpc.append(connection)
        except (OSError, TimeoutError) as exc:
            self._connect_failed(grpc_client.UNAVAILABLE, exc)
            return
        finally:
            self._opening -= 1
        self._grpc_rate_send()

    # --- stop --------------------------------------------------------------------------------
    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Send nothing more, wait for the requests in flight, close the connections."""
        self.running = False
        self._backlog = 0
        self._drained = asyncio.Event()
        if self.outstanding > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_timeout_s)
        for task in list(self._tasks):
            task.cancel()
        for connection in [*self._http, *self._idle]:
            connection.close()
        for grpc_connection in self._grpc:
            grpc_connection.close()
        await asyncio.sleep(0)
