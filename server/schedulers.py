"""Schedulers sit between the data plane and a model version's instances; config.pbtxt's
`scheduling_choice` picks one from a table, like runtimes by platform.

    dynamic_batching     -> Batcher (Triton's dynamic batcher; no `dynamic_batching`: one
                            request per execution)
    sequence_batching    -> SequenceBatcher (Triton's sequence batcher: slots, control inputs,
                            implicit state kept by the scheduler)
    ensemble_scheduling  -> EnsembleScheduler (steps call back into the data plane)

Every scheduler offers the same three things to the data plane and the repository.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.batching import Batcher, BatchingPolicy, BatchResult, RequestTiming
from server.ensemble import ensemble_scheduler
from server.padding import padding_plan
from server.repository_format import ModelConfig
from server.runtimes import RequestRuntime, Runtime
from server.sequence import SequenceBatcher, SequencePolicy
from server.services import InferenceServices
from server.types import InferenceRequest

DEFAULT_CHOICE = "dynamic_batching"


class Scheduler(Protocol):
    """Queues a model version's requests and runs them."""

    @property
    def pending_count(self) -> int:
        """Requests accepted but not yet executing."""

    def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferenceRequest | None = None,
    ) -> Awaitable[tuple[Any, RequestTiming]]:
        """Run one validated request; its outputs (or its response stream) and timing (an
        `async def`, or a plain one that queues the request and returns a future)."""

    async def drain(self) -> None:
        """Stop accepting, finish what was accepted, release the instances."""


class SchedulerBuilder(Protocol):
    def __call__(
        self,
        config: ModelConfig,
        instances: Sequence[Runtime | RequestRuntime],
        output_names: Sequence[str],
        on_batch: Callable[[BatchResult], None],
        services: InferenceServices | None,
        model_dir: Path | None = None,
    ) -> Scheduler: ...


def _batcher(
    config: ModelConfig,
    instances: Sequence[Runtime | RequestRuntime],
    output_names: Sequence[str],
    on_batch: Callable[[BatchResult], None],
    services: InferenceServices | None,
    model_dir: Path | None = None,
) -> Scheduler:
    return Batcher(
        instances,
        BatchingPolicy.from_config(config),
        output_names,
        on_batch=on_batch,
        name=str(config.name),
        padding=padding_plan(config),
    )


def _sequence_batcher(
    config: ModelConfig,
    instances: Sequence[Runtime | RequestRuntime],
    output_names: Sequence[str],
    on_batch: Callable[[BatchResult], None],
    services: InferenceServices | None,
    model_dir: Path | None = None,
) -> Scheduler:
    return SequenceBatcher(
        instances, SequencePolicy.from_config(config, model_dir), output_names, on_batch
    )


def _ensemble(
    config: ModelConfig,
    instances: Sequence[Runtime | RequestRuntime],
    output_names: Sequence[str],
    on_batch: Callable[[BatchResult], None],
    services: InferenceServices | None,
    model_dir: Path | None = None,
) -> Scheduler:
    return ensemble_scheduler(config, services, on_batch)


SCHEDULER_BY_CHOICE: dict[str, SchedulerBuilder] = {
    "dynamic_batching": _batcher,
    "sequence_batching": _sequence_batcher,
    "ensemble_scheduling": _ensemble,
}
# schedulers whose versions have no instances of their own
WITHOUT_INSTANCES = frozenset({"ensemble_scheduling"})


def scheduling_choice(config: ModelConfig) -> str:
    """The config's scheduling_choice (dynamic_batching when it names none)."""
    return str(config.WhichOneof("scheduling_choice") or DEFAULT_CHOICE)
