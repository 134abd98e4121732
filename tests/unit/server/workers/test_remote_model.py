"""--shared-batching: which models load in their owner only, and what a RemoteScheduler sends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from server import repository as repository_module
from server.batching import RequestTiming
from server.errors import ServingError
from server.repository import ModelEntry, ModelRepository, VersionState
from server.repository_format import ModelConfig
from server.settings import ModelControlMode
from server.types import InferenceRequest
from server.workers.remote_model import (
    SUBMIT,
    OwnerPlacement,
    RemoteScheduler,
    runs_in_owner,
    shares_instances,
)


def config(text: str) -> ModelConfig:
    return text_format.Parse(text, ModelConfig())


def test_batched_sequence_and_decoupled_models_run_in_their_owner_only() -> None:
    assert runs_in_owner(config("max_batch_size: 8 dynamic_batching {}"))
    assert runs_in_owner(config("max_batch_size: 0"))  # one request per execution
    assert runs_in_owner(config("max_batch_size: 8 sequence_batching {}"))  # state there too
    assert not runs_in_owner(config('platform: "ensemble" ensemble_scheduling {}'))
    decoupled = "max_batch_size: 8 model_transaction_policy { decoupled: true }"
    assert runs_in_owner(config(decoupled))  # its requests go there whole, streaming back
    assert runs_in_owner(config(decoupled + " sequence_batching {}"))


def test_placement_is_remote_only_where_another_worker_owns_the_model() -> None:
    async def call(slot: int, message: dict[str, Any]) -> Any:
        raise AssertionError("not called")

    placement = OwnerPlacement(call, lambda name: None if name == "mine" else 1)
    batched = config("max_batch_size: 8")
    assert placement.owns("mine") and not placement.owns("theirs")
    assert placement.remote("mine", "1", batched) is None
    scheduler = placement.remote("theirs", "1", batched)
    assert isinstance(scheduler, RemoteScheduler) and scheduler.owner == 1
    sequence = config("max_batch_size: 8 sequence_batching {}")
    assert isinstance(placement.remote("theirs", "1", sequence), RemoteScheduler)
    streamed = config("model_transaction_policy { decoupled: true } sequence_batching {}")
    assert isinstance(placement.remote("theirs", "1", streamed), RemoteScheduler)
    ensemble = config('platform: "ensemble" ensemble_scheduling {}')
    assert placement.remote("theirs", "1", ensemble) is None  # every worker runs its steps


PYTHON = 'backend: "python" max_batch_size: 8 '


@pytest.mark.parametrize(
    ("text", "shared"),
    [
        (PYTHON + "dynamic_batching {}", True),
        (PYTHON + "dynamic_batching { preferred_batch_size: [8] }", True),  # Triton's default
        (PYTHON, True),  # one request per execution, as before
        ('backend: "python" max_batch_size: 0', True),
        # batches that need one queue to see every request stay with the owner's batcher
        (PYTHON + "dynamic_batching { max_queue_delay_microseconds: 100 }", False),
        (PYTHON + "dynamic_batching { preferred_batch_size: [4] }", False),
        (PYTHON + "dynamic_batching { priority_levels: 2 default_priority_level: 1 }", False),
        (PYTHON + "dynamic_batching { default_queue_policy { max_queue_size: 4 } }", False),
        (PYTHON + "sequence_batching {}", False),  # the sequences' state is the owner's
        (PYTHON + "model_transaction_policy { decoupled: true }", False),  # streams from there
        (PYTHON + "response_cache { enable: true }", False),  # the owner's cache answers
        ("max_batch_size: 8 dynamic_batching {}", False),  # not Python: no process to share
    ],
)
def test_which_python_models_share_their_instance_processes(text: str, shared: bool) -> None:
    assert shares_instances(config(text)) is shared


def test_the_owner_starts_shared_processes_the_other_workers_attach(tmp_path: Path) -> None:
    async def call(slot: int, message: dict[str, Any]) -> Any:
        raise AssertionError("not called")

    python = config(PYTHON + "dynamic_batching {}")
    owned = OwnerPlacement(call, lambda model: None, tmp_path).shared_instances(
        "m", "1", python, "d1"
    )
    elsewhere = OwnerPlacement(call, lambda model: 1, tmp_path).shared_instances(
        "m", "1", python, "d1"
    )
    assert owned is not None and elsewhere is not None
    assert (owned.attach, elsewhere.attach) == (False, True)
    assert owned.socket_path(0) == elsewhere.socket_path(0) != owned.socket_path(1)
    assert owned.socket_path(0).parent == tmp_path
    # another version's files (digest): another process, so another socket
    other = OwnerPlacement(call, lambda model: 1, tmp_path).shared_instances("m", "1", python, "d2")
    assert other is not None and other.socket_path(0) != owned.socket_path(0)
    # one process (no --workers folder), or a model that does not share: none
    assert OwnerPlacement(call, lambda model: 1).shared_instances("m", "1", python, "d1") is None
    onnx = config("max_batch_size: 8 dynamic_batching {}")
    assert OwnerPlacement(call, lambda m: 1, tmp_path).shared_instances("m", "1", onnx, "d") is None


def test_the_verdict_waits_for_the_owner_to_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.errors import WorkerUnreachable
    from server.workers import remote_model

    calls: list[dict[str, Any]] = []

    async def call(slot: int, message: dict[str, Any]) -> Any:
        calls.append(message)
        if len(calls) < 3:
            raise WorkerUnreachable("not yet")
        return "UNAVAILABLE", "failed to load 'm': boom", ""

    monkeypatch.setattr(remote_model, "OWNER_RETRY_S", 0.0)
    placement = OwnerPlacement(call, lambda name: 1)
    verdict = asyncio.run(placement.verdict("m", "2", 7))
    assert verdict == ("UNAVAILABLE", "failed to load 'm': boom", "")
    assert calls[-1] == {remote_model.VERDICT: ("m", "2", 7)} and len(calls) == 3


def test_a_submission_carries_the_requests_inputs_once_and_drain_waits_for_it() -> None:
    sent: list[tuple[int, dict[str, Any]]] = []
    release = asyncio.Event()

    async def call(slot: int, message: dict[str, Any]) -> Any:
        sent.append((slot, message))
        await release.wait()
        return {"y": np.ones((2, 3))}, RequestTiming(0.0, 0.0, 0.0, 0.0, 2)

    async def scenario() -> None:
        scheduler = RemoteScheduler(call, 1, "m", "3")
        inputs = {"x": np.zeros((2, 4), np.float32)}
        request = InferenceRequest("m", "3", inputs)  # "" would take the owner's latest
        task = asyncio.create_task(scheduler.submit(inputs, 2, 0, 0, request))
        await asyncio.sleep(0)
        draining = asyncio.create_task(scheduler.drain())
        await asyncio.sleep(0)
        assert not draining.done()  # the submission is still with the owner
        with pytest.raises(ServingError, match="shutting down"):
            await scheduler.submit(inputs, 2)
        release.set()
        outputs, _ = await task
        await draining
        assert outputs["y"].shape == (2, 3)
        ((slot, message),) = sent
        model, version, sent_inputs, rows, _, _, sent_request = message[SUBMIT]
        assert (slot, model, version, rows) == (1, "m", "3", 2)
        assert sent_inputs is None and sent_request is request  # the inputs travel once
        assert scheduler.pending_count == 0  # queued in the owner, counted there

    asyncio.run(scenario())


def test_an_owner_answers_a_verdict_once_its_load_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner waits while a load of the model runs (its entry may still show the last load's
    failure), then answers how that load ended."""

    monkeypatch.setattr(repository_module, "SETTLE_POLL_S", 0.001)
    repository = ModelRepository(tmp_path, ModelControlMode.EXPLICIT)
    entry = ModelEntry("m", tmp_path / "m", live=True, failure="the last load failed")
    repository._entries["m"] = entry
    repository.control_done = 0

    async def scenario() -> tuple[tuple[str, str, str], tuple[str, str, str]]:
        stale = await repository.settled_state("m", "1", 0)  # no load running: the entry stands
        repository._loading.add("m")
        waiting = asyncio.create_task(repository.settled_state("m", "1", 0))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # a load runs: the old failure is not its verdict
        entry.failure, entry.states = "", {1: VersionState("READY")}
        repository._loading.discard("m")
        return stale, await waiting

    stale, settled = asyncio.run(scenario())
    assert stale == ("UNAVAILABLE", "the last load failed", "")
    assert settled == ("READY", "", "")  # no version object in this entry: no digest


def test_an_owner_answers_for_the_control_call_the_asking_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question can come before the owner has received the control call or reached the
    model in it: its entry then tells how the previous call's load ended, which is not the
    answer. It answers once that call's load of the model has ended (or the call found it
    unchanged), or once it has completed the call."""

    monkeypatch.setattr(repository_module, "SETTLE_POLL_S", 0.001)
    repository = ModelRepository(tmp_path, ModelControlMode.EXPLICIT)
    entry = ModelEntry("m", tmp_path / "m", live=True, failure="call 3 failed to load it")
    repository._entries["m"] = entry
    repository._passed["m"] = repository.control_seq = repository.control_done = 3

    async def scenario() -> None:
        assert await repository.settled_state("m", "1", 3) == (
            "UNAVAILABLE",
            "call 3 failed to load it",
            "",
        )
        waiting = asyncio.create_task(repository.settled_state("m", "1", 4))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # call 4 has not reached this worker
        repository.control_seq = 4
        repository._loading.add("m")
        await asyncio.sleep(0.01)
        assert not waiting.done()  # call 4 loads the model here
        entry.failure, entry.states = "", {1: VersionState("READY")}
        repository._loading.discard("m")
        repository._passed["m"] = 4
        assert await waiting == ("READY", "", "")
        # a call that leaves the model alone: the answer once the owner has completed it
        waiting = asyncio.create_task(repository.settled_state("m", "1", 5))
        repository.control_seq = 5
        await asyncio.sleep(0.01)
        assert not waiting.done()
        repository.control_done = 5
        assert await waiting == ("READY", "", "")

    asyncio.run(scenario())


def test_the_verdict_is_asked_again_when_the_owner_stops_before_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An owner killed while it loads the model closes the connection the question waits on:
    its replacement answers. Any other failure is the version's reason, never an exception (the
    asking worker's version would stay LOADING)."""
    from server.errors import ErrorKind, WorkerStopped
    from server.workers import remote_model

    answers: list[Any] = [WorkerStopped("the worker stopped"), ("READY", "", "ab12")]

    async def call(slot: int, message: dict[str, Any]) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(remote_model, "OWNER_RETRY_S", 0.0)
    verdict = asyncio.run(OwnerPlacement(call, lambda name: 1).verdict("m", "1", 2))
    assert verdict == ("READY", "", "ab12")
    answers[:] = [ServingError(ErrorKind.INTERNAL, "the owner failed")]
    assert asyncio.run(OwnerPlacement(call, lambda name: 1).verdict("m", "1", 2)) == (
        "UNAVAILABLE",
        "the owner failed",
        "",
    )
