"""Under --workers N a cached model's requests run whole in its owner's response cache, so a
repeated request hits whichever worker took it. Two real DataPlanes in one process, each with
its own repository and cache; the forwarding between them stands in for the Unix socket
(server/workers/sequences.py, tested with real workers in
tests/integration/server/test_workers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError, WorkerUnreachable
from server.observers import ObserverFanout
from server.operations import Operations
from server.repository import ModelRepository
from server.response_cache import ResponseCache
from server.settings import ModelControlMode
from server.types import InferenceRequest, InferenceResponse
from tests.support.onnx_models import mlp_model, write_model

OWNER, OTHER = 0, 1


class Owners:
    """A worker's view of the others (server/dataplane.py SequenceOwners): every model is
    owned by OWNER, reached through its `infer_forwarded` unless `reachable` is off (the owner
    restarting)."""

    def __init__(self, slot: int, owner_plane: DataPlane | None) -> None:
        self.slot, self.owner_plane = slot, owner_plane
        self.reachable = True
        self.forwarded = 0

    def owner(self, sequence_id: int | str) -> int | None:
        return None

    def model_owner(self, model_name: str) -> int | None:
        return None if self.slot == OWNER else OWNER

    async def forward(self, slot: int, request: InferenceRequest) -> InferenceResponse:
        assert slot == OWNER and self.owner_plane is not None
        if not self.reachable:
            raise WorkerUnreachable("worker 0 is restarting")
        self.forwarded += 1
        return await self.owner_plane.infer_forwarded(request)

    def forward_stream(
        self, slot: int, request: InferenceRequest
    ) -> AsyncIterator[InferenceResponse | ServingError]:
        raise AssertionError("no decoupled model here")


async def worker(repository: Path, slot: int, owner: DataPlane | None) -> tuple[DataPlane, Owners]:
    dataplane = DataPlane(
        ModelRepository(repository, ModelControlMode.EXPLICIT, ObserverFanout()),
        ObserverFanout(),
        operations=Operations(response_cache=ResponseCache(1_000_000)),
    )
    await dataplane.repository.start(["cached"])
    owners = Owners(slot, owner)
    dataplane.sequence_owners = owners
    dataplane.started = True
    return dataplane, owners


def request(value: float) -> InferenceRequest:
    return InferenceRequest("cached", "", {"x": np.full((1, 4), value, np.float32)})


def cache_hits(dataplane: DataPlane) -> tuple[int, int]:
    assert dataplane.ops.response_cache is not None
    counters = dataplane.ops.response_cache.counters
    return counters.hits, counters.misses


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    model = mlp_model(4, 8, 3, input_name="x", output_name="y")
    write_model(tmp_path, "cached", model, "max_batch_size: 8\nresponse_cache { enable: true }\n")
    return tmp_path


def test_a_cached_models_requests_run_in_its_owners_cache(repository: Path) -> None:
    async def scenario() -> None:
        owner, _ = await worker(repository, OWNER, None)
        other, route = await worker(repository, OTHER, owner)
        first = await other.infer(request(0.5))
        again = await owner.infer(request(0.5))  # taken by the owner itself: a hit
        third = await other.infer(request(0.5))
        np.testing.assert_array_equal(first.outputs["y"], again.outputs["y"])
        np.testing.assert_array_equal(first.outputs["y"], third.outputs["y"])
        assert cache_hits(owner) == (2, 1) and cache_hits(other) == (0, 0)
        assert route.forwarded == 2
        stats = owner.repository.get("cached").statistics
        assert other.repository.get("cached").statistics is not stats

    asyncio.run(scenario())


def test_a_forwarded_request_runs_while_the_owner_drains_and_a_new_one_does_not(
    repository: Path,
) -> None:
    """The worker that took it accepted it: the owner's drain must not refuse it."""

    async def scenario() -> None:
        owner, _ = await worker(repository, OWNER, None)
        other, _ = await worker(repository, OTHER, owner)
        owner.accepting = False
        assert (await other.infer(request(1.0))).outputs["y"].shape == (1, 3)
        with pytest.raises(ServingError, match="shutting down") as refused:
            await owner.infer(request(1.0))
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        other.accepting = False
        with pytest.raises(ServingError, match="shutting down"):
            await other.infer(request(2.0))  # not accepted: never forwarded

    asyncio.run(scenario())


def test_while_the_owner_restarts_the_request_runs_where_it_was_taken(repository: Path) -> None:
    async def scenario() -> None:
        owner, _ = await worker(repository, OWNER, None)
        other, route = await worker(repository, OTHER, owner)
        route.reachable = False
        answer = await other.infer(request(3.0))
        assert answer.outputs["y"].shape == (1, 3)
        assert cache_hits(other) == (0, 1) and cache_hits(owner) == (0, 0)

    asyncio.run(scenario())
