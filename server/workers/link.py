"""A worker's side of the control channel: what makes N worker processes one server.

The worker asks the supervisor to gather statistics and shared memory status from every worker
and to fan repository control and shared-state changes (server/workers/shared_state.py) out to
every worker; the supervisor asks the worker for its own statistics, metric families and
regions, to load, unload or poll (the worker answers which versions' numbers that reset, so the
supervisor forgets what dead workers had counted for them: server/workers/retired.py), to make
or undo a shared-state change, and tells it when every worker has been ready once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from server.errors import ErrorKind, ServingError
from server.trace_settings import Change, TraceSetting
from server.tracing import TraceEntries
from server.workers.channel import Channel, ChannelClosed, Message, RemoteError
from server.workers.merge import cumulative_families, wire_families
from server.workers.shared_state import STATE_OPS, apply_state, replay_state

if TYPE_CHECKING:
    from server.dataplane import DataPlane

logger = logging.getLogger("ferry.workers")


def serving_error(exc: RemoteError | ChannelClosed) -> ServingError:
    """A failure on another worker (or of the channel) as the client should see it."""
    if isinstance(exc, RemoteError):
        try:
            return ServingError(ErrorKind(exc.kind), exc.message)
        except ValueError:
            return ServingError(ErrorKind.INTERNAL, exc.message)
    return ServingError(ErrorKind.UNAVAILABLE, "the server is restarting its workers")


class WorkerLink:
    """Connects one worker to its supervisor; the DataPlane's view of the other workers."""

    def __init__(self, control_path: Path, slot: int) -> None:
        self.control_path, self.slot = control_path, slot
        self.every_worker_ready = False  # sticky: a worker restarting later keeps it true
        self._channel: Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._dataplane: DataPlane | None = None
        self._collect: Callable[[], Iterable[Metric]] | None = None
        self._caught_up = asyncio.Event()  # control calls wait for start-up and its replay
        self._state_caught_up = asyncio.Event()  # state calls wait for the state's replay
        self._sending: set[asyncio.Task[Any]] = set()  # traces on their way to the supervisor
        self.traces_lost = 0

    async def connect(
        self, dataplane: DataPlane, collect: Callable[[], Iterable[Metric]]
    ) -> list[Message]:
        """Join the supervisor and take on the shared state (client shared memory, log and
        trace settings) the other workers have; returns the repository control calls made
        before this worker started, to replay once its own start-up load is done."""
        self._dataplane, self._collect = dataplane, collect
        reader, writer = await asyncio.open_unix_connection(str(self.control_path))
        self._channel = Channel(reader, writer, self._handle)
        self._task = asyncio.create_task(self._channel.run())
        replay: dict[str, Any] = await self._channel.request(
            {"op": "hello", "slot": self.slot, "pid": os.getpid()}
        )
        replay_state(dataplane, replay["state"])
        self._state_caught_up.set()
        self.every_worker_ready = bool(replay["every_worker_ready"])
        dataplane.repository.start_control_call(int(replay["control_seq"]))
        calls: list[Message] = replay["repository"]
        return calls

    @property
    def closed(self) -> asyncio.Event:
        assert self._channel is not None
        return self._channel.closed

    async def catch_up(self, replay: list[Message]) -> None:
        """After this worker's start-up load: the control calls it missed, then live ones."""
        assert self._dataplane is not None
        await replay_control(self._dataplane, replay)
        self._dataplane.repository.end_control_call()
        self._caught_up.set()

    async def announce_ready(self) -> None:
        """This worker serves; the supervisor answers whether every worker has been ready."""
        self.every_worker_ready = bool(await self._ask({"op": "ready", "slot": self.slot}))

    async def _ask(self, message: Message) -> Any:
        if self._channel is None:
            raise ServingError(ErrorKind.UNAVAILABLE, "this worker is not connected")
        try:
            return await self._channel.request(message)
        except (RemoteError, ChannelClosed) as exc:
            raise serving_error(exc) from None

    def send_trace(self, setting: TraceSetting, entries: TraceEntries) -> None:
        """Hand a finished Triton-mode trace to the supervisor, which writes the server's one
        trace file (server/workers/trace_file.py); from the event loop, without waiting."""
        if self._channel is None or self._channel.closed.is_set():
            self._trace_lost("this worker is not connected to its supervisor")
            return
        message = {
            "op": "trace",
            "file": setting.file,
            "log_frequency": setting.log_frequency,
            "entries": entries,
        }
        task = asyncio.get_running_loop().create_task(self._channel.request(message))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._trace_lost(str(task.exception()))

    def _trace_lost(self, why: str) -> None:
        self.traces_lost += 1
        if self.traces_lost == 1:  # once: the supervisor gone, every later trace goes too
            logger.warning("traces are lost on their way to the supervisor: %s", why)

    async def flush_traces(self) -> None:
        """Until the traces sent so far have reached the supervisor (before this worker exits)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # --- what the DataPlane asks ---------------------------------------------------------------

    async def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        """Triton statistics of every worker, merged."""
        result: list[dict[str, Any]] = await self._ask(
            {"op": "statistics", "name": name, "version": version}
        )
        return result

    async def load_model(
        self, name: str, config_json: str | None, files: Mapping[str, bytes] | None
    ) -> None:
        """Load on every worker; answers once all have (the first failure is raised)."""
        encoded = {k: base64.b64encode(v).decode() for k, v in (files or {}).items()}
        await self._ask({"op": "load", "name": name, "config": config_json, "files": encoded})

    async def unload_model(self, name: str) -> None:
        """Unload on every worker; answers once all have."""
        await self._ask({"op": "unload", "name": name})

    async def register_shared_memory(
        self, name: str, key: str, offset: int, byte_size: int
    ) -> None:
        """Register on every worker (or on none: the first refusal is raised)."""
        await self._ask(
            {
                "op": "shm_register",
                "name": name,
                "key": key,
                "offset": offset,
                "byte_size": byte_size,
            }
        )

    async def unregister_shared_memory(self, name: str) -> None:
        """Unregister on every worker (all regions when `name` is empty)."""
        await self._ask({"op": "shm_unregister", "name": name})

    async def shared_memory_status(self) -> list[dict[str, Any]]:
        """Every worker's registered regions, each name once."""
        regions: list[dict[str, Any]] = await self._ask({"op": "shm_status"})
        return regions

    async def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change the log settings of every worker; the settings now in force."""
        settings: dict[str, Any] = await self._ask({"op": "log_settings", "changes": dict(changes)})
        return settings

    async def update_trace_settings(
        self, model: str, changes: Mapping[str, Change]
    ) -> dict[str, Any]:
        """Change a trace setting on every worker; the setting now in force."""
        setting: dict[str, Any] = await self._ask(
            {"op": "trace_settings", "model": model, "changes": dict(changes)}
        )
        return setting

    # --- what the supervisor asks --------------------------------------------------------------

    async def _handle(self, message: Message) -> Any:
        dataplane = self._dataplane
        assert dataplane is not None and self._collect is not None
        op = message["op"]
        if op == "statistics":
            return dataplane.local_statistics_or_none(message["name"], message["version"])
        if op == "families":
            return wire_families(self._collect())
        if op == "every_worker_ready":
            self.every_worker_ready = True
            return None
        if op in ("load", "unload", "poll"):
            await self._caught_up.wait()
            dataplane.repository.start_control_call(int(message["seq"]))
            versions, series = _incarnations(dataplane), _series(self._collect())
            try:
                await apply_control(dataplane, message)
            finally:
                dataplane.repository.end_control_call()
            after = _incarnations(dataplane)
            return {
                "statistics": [k for k, v in versions.items() if after.get(k) is not v],
                "series": sorted(series - _series(self._collect())),
            }
        if op in STATE_OPS:
            await self._state_caught_up.wait()
            return apply_state(dataplane, message)
        raise ValueError(f"unknown control request '{op}'")


def _incarnations(dataplane: DataPlane) -> dict[tuple[str, str], object]:
    """The ready versions (a version loaded again is a new object: its statistics start at 0)."""
    return {(v.name, v.version): v for v in dataplane.repository.ready_versions()}


def _series(families: Iterable[Metric]) -> set[tuple[str, str]]:
    """The (model, version) pairs that have counter or histogram series (they go when the
    version unloads)."""
    return {
        (labels["model"], labels.get("version", ""))
        for _, _, _, samples in cumulative_families(wire_families(families))
        for _, labels, _ in samples
        if "model" in labels
    }


async def apply_control(dataplane: DataPlane, message: Message) -> None:
    """Run one repository control call on this worker's repository."""
    repository = dataplane.repository
    if message["op"] == "load":
        files = {k: base64.b64decode(v) for k, v in message.get("files", {}).items()}
        await repository.load(message["name"], message.get("config"), files or None)
    elif message["op"] == "unload":
        await repository.unload(message["name"])
    else:
        await repository.poll_once()


async def replay_control(dataplane: DataPlane, calls: list[Message]) -> None:
    """Bring a (re)started worker to the repository state the others have."""
    for call in calls:
        try:
            await apply_control(dataplane, call)
        except ServingError as exc:
            logger.error("replaying %s '%s': %s", call["op"], call.get("name"), exc.message)
