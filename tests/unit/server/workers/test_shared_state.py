"""Shared state across workers, in one process: a real ControlHub on a Unix socket and real
WorkerLinks, each with its own DataPlane, SharedMemoryManager and settings, over real POSIX
shared memory. Changes reach every worker, a refusal on one undoes the change on the others,
and a worker that joins later replays what is live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError
from server.logs import LogControl, LogSettings
from server.observers import ObserverFanout
from server.operations import Operations
from server.repository import ModelRepository
from server.settings import ModelControlMode
from server.shared_memory import SharedMemoryManager, SharedMemoryReference
from server.trace_settings import TraceSetting, TraceSettings
from server.tracing import Tracer
from server.workers.hub import ControlHub
from server.workers.link import WorkerLink
from tests.support.onnx_models import mlp_model, write_model
from tests.support.shared_memory import ClientRegion, client_region


class Workers:
    """A hub and the links of the workers that joined it."""

    def __init__(self, hub: ControlHub, control: Path, repository: Path) -> None:
        self.hub, self.control, self.repository = hub, control, repository
        self.links: list[WorkerLink] = []
        self.dataplanes: list[DataPlane] = []

    async def join(self) -> tuple[WorkerLink, DataPlane]:
        """A new worker: its own data plane and settings; it takes on the shared state."""
        operations = Operations(
            tracer=Tracer(TraceSettings(TraceSetting(rate=1000, file="/dev/null"))),
            log_control=LogControl(LogSettings()),
        )
        dataplane = DataPlane(
            ModelRepository(self.repository, ModelControlMode.EXPLICIT, ObserverFanout()),
            ObserverFanout(),
            shared_memory=SharedMemoryManager(),
            operations=operations,
        )
        link = WorkerLink(self.control, len(self.links))
        dataplane.cluster = link
        await link.catch_up(await link.connect(dataplane, list))
        self.links.append(link)
        self.dataplanes.append(dataplane)
        return link, dataplane

    def names(self, index: int) -> list[str]:
        manager = self.dataplanes[index].shared_memory
        assert manager is not None
        return [region["name"] for region in manager.status()]


@contextlib.asynccontextmanager
async def workers(count: int) -> AsyncIterator[Workers]:
    folder = Path(tempfile.mkdtemp(prefix="ferry-hub-test-"))
    hub = ControlHub(count, LogControl(LogSettings()))  # the supervisor's own log settings
    server = await asyncio.start_unix_server(hub.on_connect, path=str(folder / "control.sock"))
    group = Workers(hub, folder / "control.sock", folder)
    try:
        yield group
    finally:
        for dataplane in group.dataplanes:
            assert dataplane.shared_memory is not None and dataplane.ops.log_control is not None
            dataplane.shared_memory.close()
            dataplane.ops.log_control.close()
        assert hub.log_control is not None
        hub.log_control.close()
        server.close()
        logging.getLogger().setLevel(logging.WARNING)


def run(scenario: Callable[[ClientRegion], Awaitable[None]]) -> None:
    """The scenario with a 64-byte client shared memory object, destroyed after it."""
    with client_region(64) as region:
        asyncio.run(scenario(region))


def test_a_registration_reaches_every_worker_and_a_later_one() -> None:
    async def scenario(region: ClientRegion) -> None:
        async with workers(3) as group:
            (a, a_plane), (_, b_plane) = await group.join(), await group.join()
            await a_plane.register_shared_memory("in", region.key, 0, 64)
            await a_plane.register_shared_memory("out", region.key, 32, 32)
            assert group.names(0) == group.names(1) == ["in", "out"]
            # status on any worker: every worker's regions
            assert await b_plane.shared_memory_status("out") == [
                {"name": "out", "key": region.key, "offset": 32, "byte_size": 32}
            ]
            with pytest.raises(ServingError) as exists:  # the single process's words
                await b_plane.register_shared_memory("in", region.key, 0, 8)
            assert exists.value.kind == ErrorKind.ALREADY_EXISTS
            assert exists.value.message == "shared memory region 'in' already in manager"
            with pytest.raises(ServingError, match="Unable to find system shared memory region"):
                await b_plane.shared_memory_status("nothing")

            await b_plane.unregister_shared_memory("in")
            assert group.names(0) == group.names(1) == ["out"]
            await group.join()  # replays what is live: "out", not the unregistered "in"
            assert group.names(2) == ["out"]
            await a.unregister_shared_memory("")
            assert group.names(0) == group.names(1) == group.names(2) == []

    run(scenario)


def test_a_refusal_on_one_worker_undoes_the_registration_on_the_others() -> None:
    async def scenario(region: ClientRegion) -> None:
        async with workers(2) as group:
            (_, a_plane), (_, b_plane) = await group.join(), await group.join()
            await a_plane.register_shared_memory("r", region.key, 0, 64)
            b_manager = b_plane.shared_memory
            assert b_manager is not None
            with b_manager.hold():  # a request on worker b reads the region...
                b_manager.read(SharedMemoryReference("r", 8))
                await a_plane.unregister_shared_memory("r")  # ...so b keeps it until done
                assert (group.names(0), group.names(1)) == ([], ["r"])
                assert [r["name"] for r in await a_plane.shared_memory_status()] == ["r"]
                with pytest.raises(ServingError) as refused:
                    await a_plane.register_shared_memory("r", region.key, 0, 16)
                assert refused.value.kind == ErrorKind.ALREADY_EXISTS
                assert (group.names(0), group.names(1)) == ([], ["r"])  # undone on a
            assert group.names(1) == []  # b's request is done
            await a_plane.register_shared_memory("r", region.key, 0, 16)
            assert group.names(0) == group.names(1) == ["r"]
            assert group.hub.state.replay() == [
                {"op": "shm_register", "name": "r", "key": region.key, "offset": 0, "byte_size": 16}
            ]
            # a refusal everywhere changes nothing and is the single process's error
            with pytest.raises(ServingError, match="Unable to open shared memory region"):
                await b_plane.register_shared_memory("gone", "/ferry_no_such_object", 0, 8)
            assert group.names(0) == group.names(1) == ["r"]
            await a_plane.unregister_shared_memory()

    run(scenario)


def test_log_and_trace_settings_reach_every_worker_and_a_later_one() -> None:
    async def scenario(_: ClientRegion) -> None:
        async with workers(3) as group:
            (a, a_plane), (_, b_plane) = await group.join(), await group.join()
            answer = await a_plane.update_log_settings({"log_verbose_level": 2})
            assert answer["log_verbose_level"] == 2
            assert b_plane.log_settings() == answer
            assert group.hub.log_control is not None
            assert group.hub.log_control.settings.log_verbose_level == 2  # the supervisor's too
            with pytest.raises(ServingError, match="expect boolean for 'log_info'"):
                await b_plane.update_log_settings({"log_info": "yes", "log_warning": False})
            assert a_plane.log_settings() == b_plane.log_settings() == answer

            await a_plane.update_trace_settings("", {"trace_rate": "7"})
            await a.update_trace_settings("mlp", {"trace_level": ["TIMESTAMPS"]})
            assert b_plane.ops.trace_snapshot() == {
                "": {"trace_rate": "7"},
                "mlp": {"trace_level": ["TIMESTAMPS"]},
            }
            assert b_plane.ops.request_context  # tracing is on for mlp on worker b too
            with pytest.raises(ServingError) as unsupported:
                await b_plane.update_trace_settings("", {"trace_file": "x"})
            assert unsupported.value.kind == ErrorKind.UNSUPPORTED

            _, c_plane = await group.join()
            assert c_plane.log_settings() == answer
            assert c_plane.trace_settings("") == a_plane.trace_settings("")
            assert c_plane.ops.trace_snapshot() == a_plane.ops.trace_snapshot()
            assert c_plane.ops.request_context

    run(scenario)


def test_statistics_answer_from_the_workers_that_serve_the_model() -> None:
    """While a model loads it may be ready in its owner (after its warmup) and not yet in
    another worker: a statistics call that reaches the other answers the server's figures, not
    "not available"; a model that no worker serves is refused in the single process's words."""

    async def scenario(region: ClientRegion) -> None:
        async with workers(2) as group:
            (_, owner), (_, other) = await group.join(), await group.join()
            write_model(group.repository, "m", mlp_model())
            await owner.repository.load("m")  # on the owner only, as during a load
            try:
                assert [entry["name"] for entry in await other.statistics("m")] == ["m"]
                with pytest.raises(ServingError) as unknown:
                    await other.statistics("nothing")
                assert unknown.value.message == "requested model 'nothing' is not available"
            finally:
                await owner.repository.close()

    run(scenario)
