"""Models that another worker runs, under `ferry serve --workers N --shared-batching`.

A model version on the default scheduler (dynamic batching, or one request per execution) or
on the sequence batcher is loaded by one worker only, its owner
(`crc32(model name) % N`). Every other worker builds the version from its config alone, so
metadata, validation, statistics, request logs and drift work there as for a loaded version (a
cached model's requests go whole to the owner, whose cache holds its answers:
server/dataplane.py), with a RemoteScheduler in place of the batcher: `submit` sends the
validated request to the owner, whose batcher runs it with every other worker's, and returns its
outputs and timings (a decoupled model's requests go to the owner whole instead, and its
responses stream back). So the weights are in memory once, one batcher sees every request of the
model (for a sequence model: every sequence, with its state and slot), and a request's own work
(protocol, validation, statistics) stays in the worker its connection reached.

The owner counts the executions (batches), the worker that took the request counts the request:
the supervisor's sums are a single server's numbers. While the owner restarts, the model's
requests on the other workers fail with UNAVAILABLE (they have no instance to run them on).

A Python model (default scheduler, not decoupled, no response cache) runs differently: its
instance processes still start once, in the owner, but every worker loads the version with a
batcher of its own whose instances attach to those processes (SharedInstances,
server/runtimes/__init__.py). A request then crosses to the model's process and back, not to
the owner and back as well: each crossing costs a wake-up of another process, which on a
two-core machine was most of such a model's cost. The batches that wait for a process when it
is free run together in one `execute` (up to max_batch_size rows), so the model sees the
batches one batcher would form, and exactly one worker counts each execution.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server.batching import RequestTiming
from server.errors import ServingError, WorkerGone
from server.inflight import InFlight
from server.repository_format import ModelConfig
from server.response_cache import uses_response_cache
from server.runtimes import SharedInstances
from server.schedulers import DEFAULT_CHOICE, Scheduler, scheduling_choice
from server.types import InferenceRequest

# the message a worker sends to a model's owner: (model, version, inputs, rows, priority,
# timeout_us, request); inputs are None when they are the request's own (sent once)
SUBMIT = "submit"
# asks a model's owner how its load of a version ended in a control call (the supervisor numbers
# them): (model, version, control call) -> (state, reason, digest of the version it serves)
VERDICT = "verdict"
OWNER_SCHEDULERS = (DEFAULT_CHOICE, "sequence_batching")
OWNER_START_S = 120.0  # how long a worker waits for a model's owner to listen
OWNER_RETRY_S = 0.05
Tensors = Mapping[str, np.ndarray]
Submission = tuple[str, str, Tensors | None, int, int, int, InferenceRequest | None]
Call = Callable[[int, dict[str, Any]], Awaitable[Any]]


def shares_instances(config: ModelConfig) -> bool:
    """Whether --shared-batching shares this model's instance processes across workers
    instead of sending its requests to the owner: a Python model on the default scheduler,
    neither decoupled (its responses stream from the owner) nor cached (the owner's cache
    holds its answers), whose batches form when an instance is free (no dynamic batching, or
    dynamic batching without a queue delay, preferred sizes, priorities or queue policies:
    what the model's process runs together then is what one batcher would have formed;
    those settings need one queue that sees every request)."""
    return (
        (config.platform or config.backend) == "python"
        and scheduling_choice(config) == DEFAULT_CHOICE
        and not config.model_transaction_policy.decoupled
        and not uses_response_cache(config)
        and _batches_when_free(config)
    )


def _batches_when_free(config: ModelConfig) -> bool:
    if not config.HasField("dynamic_batching"):
        return True
    batching = config.dynamic_batching
    return (
        batching.max_queue_delay_microseconds == 0
        and all(size == config.max_batch_size for size in batching.preferred_batch_size)
        and batching.priority_levels == 0
        and not batching.HasField("default_queue_policy")
        and not batching.priority_queue_policy
    )


def runs_in_owner(config: ModelConfig) -> bool:
    """Whether --shared-batching loads this model in its owner only: the default scheduler or
    the sequence batcher (every sequence of the model then lives in the owner's batcher, with
    its state). A decoupled model's requests go to its owner whole, streaming back
    (server/dataplane.py); ensembles run their steps wherever they are asked (each step's model
    is remote or local on its own)."""
    return scheduling_choice(config) in OWNER_SCHEDULERS


class RemoteScheduler:
    """The scheduler of a version its owner worker runs (see the module's docstring)."""

    def __init__(self, call: Call, owner: int, model: str, version: str) -> None:
        self._call, self.owner, self.model, self.version = call, owner, model, version
        self._inflight = InFlight()

    @property
    def pending_count(self) -> int:
        """0: the requests wait in the owner's queue, and the owner counts them."""
        return 0

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferenceRequest | None = None,
    ) -> tuple[Any, RequestTiming]:
        own_inputs = request is not None and request.inputs is inputs
        # a request for the latest version takes the owner's latest: during a reload the owner
        # may have retired this one a moment before this worker hears of the new one
        latest = request is not None and not request.model_version
        submission: Submission = (
            self.model,
            "" if latest else self.version,
            None if own_inputs else dict(inputs),
            rows,
            priority,
            timeout_us,
            request,
        )
        with self._inflight.admit():
            outputs, timing = await self._call(self.owner, {SUBMIT: submission})
        return outputs, timing

    async def drain(self) -> None:
        """Refuse new requests; wait for the ones sent to the owner."""
        await self._inflight.drain()


class OwnerPlacement:
    """The repository's placement under --shared-batching (server/repository.py Placement)."""

    def __init__(
        self, call: Call, owner_of: Callable[[str], int | None], folder: Path | None = None
    ) -> None:
        self._call, self._owner_of = call, owner_of
        self._folder = folder  # the supervisor's private folder: shared instances' sockets

    def owns(self, model: str) -> bool:
        return self._owner_of(model) is None

    def remote(self, model: str, version: str, config: ModelConfig) -> Scheduler | None:
        """A RemoteScheduler when another worker owns the model and it runs in its owner
        only, else None (load it here)."""
        owner = self._owner_of(model)
        if owner is None or not runs_in_owner(config):
            return None
        return RemoteScheduler(self._call, owner, model, version)

    def shared_instances(
        self, model: str, version: str, config: ModelConfig, digest: str
    ) -> SharedInstances | None:
        """The owner starts the instance processes of a model that `shares_instances`, the
        other workers attach to them; None for any other model."""
        if self._folder is None or not shares_instances(config):
            return None
        attach = self._owner_of(model) is not None
        return SharedInstances(self._folder, f"{model}/{version}/{digest}", attach)

    async def verdict(self, model: str, version: str, control_seq: int) -> tuple[str, str, str]:
        """How the owner's load of this version ended in control call `control_seq` (the one
        this worker runs; its start-up load counts as the last call before it joined):
        (state, reason, digest of the version the owner serves: server/repository.py
        served_digest), READY or UNAVAILABLE with the owner's reason, so every worker reports
        the same. Asks again while the owner is not listening (it starts with this worker, or
        restarts) or when it stopped before answering, for at most OWNER_START_S; never raises
        (the version would stay LOADING here)."""
        owner = self._owner_of(model)
        assert owner is not None
        deadline = time.monotonic() + OWNER_START_S
        while True:
            try:
                state, reason, served = await self._call(
                    owner, {VERDICT: (model, version, control_seq)}
                )
                return str(state), str(reason), str(served)
            except WorkerGone:  # not listening, or stopped before answering: ask its replacement
                if time.monotonic() >= deadline:
                    return "UNAVAILABLE", "its owner worker is not running", ""
                await asyncio.sleep(OWNER_RETRY_S)
            except ServingError as exc:
                return "UNAVAILABLE", exc.message, ""
