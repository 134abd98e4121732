"""Ensembles (`platform: "ensemble"`): a DAG of steps, each a request to another model.

`ensemble_scheduling { step [{ model_name, model_version, input_map { key: <step input> value:
<ensemble tensor> }, output_map { key: <step output> value: <ensemble tensor> } }] }`. A step runs
as soon as every tensor it reads exists; independent steps run concurrently. Each step goes back
through the server's inference entry (the data plane), so every composing model keeps its own
scheduler, statistics, metrics and drift monitoring. A failing step fails the request with the
step's error kind and message, prefixed with the ensemble's name as Triton does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.batching import BatchResult, RequestTiming
from server.errors import ErrorKind, ServingError
from server.inflight import InFlight
from server.repository_format import ModelConfig, ModelConfigError
from server.services import InferenceServices
from server.types import InferenceRequest, RequestedOutput

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True)
class EnsembleStep:
    """One step: which model runs, what it reads and what it writes (ensemble tensor names)."""

    model_name: str
    model_version: str  # "" for the latest
    input_map: Mapping[str, str]  # step input -> ensemble tensor
    output_map: Mapping[str, str]  # step output -> ensemble tensor


def is_ensemble(config: ModelConfig) -> bool:
    """True for `platform: "ensemble"` (or a config with ensemble_scheduling)."""
    return bool(config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling"))


def ensemble_steps(config: ModelConfig) -> list[EnsembleStep]:
    """The steps of an ensemble config."""
    return [
        EnsembleStep(
            model_name=step.model_name,
            model_version="" if step.model_version < 0 else str(step.model_version),
            input_map=dict(step.input_map),
            output_map=dict(step.output_map),
        )
        for step in config.ensemble_scheduling.step
    ]


def composing_models(config: ModelConfig) -> list[str]:
    """The models an ensemble calls, in step order, without repeats."""
    return list(dict.fromkeys(step.model_name for step in ensemble_steps(config)))


def missing_models_reason(ensemble: str, missing: list[str]) -> str:
    """Triton's reason for an ensemble whose composing models are not all loaded."""
    return (
        f"ensemble {ensemble} contains models that are not available or ambiguous: "
        f"{', '.join(missing)}"
    )


def step_problem(
    ensemble: str, step: EnsembleStep, inputs: set[str], outputs: set[str], decoupled: bool
) -> str:
    """Why a step cannot run on its composing model ('' when it can): a map naming a tensor the
    model does not have, or a decoupled model (one response per step here)."""
    if decoupled:
        return (
            f"in ensemble {ensemble}, model {step.model_name} is decoupled: ferry's ensemble "
            "steps take one response per request"
        )
    for key, tensor in step.input_map.items():
        if key not in inputs:
            return (
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapping to non-existing "
                f"input {key} in model {step.model_name}"
            )
    for key, tensor in step.output_map.items():
        if key not in outputs:
            return (
                f"in ensemble {ensemble}, ensemble tensor {tensor} is mapped from non-existing "
                f"output {key} in model {step.model_name}"
            )
    return ""


def validate_ensemble(config: ModelConfig) -> None:
    """Reject an ensemble whose maps do not form a DAG from its inputs to its outputs, with the
    reason Triton gives."""
    name = config.name
    if config.model_warmup:  # no instances of its own to warm up
        raise ModelConfigError(f"model_warmup can not be specified for ensemble '{name}'")
    steps = ensemble_steps(config)
    if not steps:
        raise ModelConfigError(f"must specify one or more 'step's for ensemble '{name}'")
    producer: dict[str, int] = {}
    for index, step in enumerate(steps):
        if not step.model_name:
            raise ModelConfigError(
                f"must specify 'model_name' in step {index} of ensemble '{name}'"
            )
        if not step.input_map or not step.output_map:
            raise ModelConfigError(
                f"must specify 'input_map' and 'output_map' in step {index} of ensemble '{name}'"
            )
        for tensor in step.output_map.values():
            if tensor in producer:
                raise ModelConfigError(
                    f"ensemble tensor '{tensor}' can appear in an output map only once for "
                    f"ensemble '{name}' step {index}"
                )
            producer[tensor] = index
    inputs = {tensor.name for tensor in config.input}
    for tensor in inputs:
        if tensor in producer:
            raise ModelConfigError(
                f"ensemble input '{tensor}' for ensemble '{name}' is also written by step "
                f"{producer[tensor]}"
            )
    for output in config.output:
        missing = _unconnected(output.name, inputs, producer, steps, set())
        if missing is not None:
            raise ModelConfigError(
                f"output '{output.name}' for ensemble '{name}' is not written: at least one of "
                f"its depending tensors, '{missing}', is not connected"
            )


def _unconnected(
    tensor: str,
    inputs: set[str],
    producer: dict[str, int],
    steps: list[EnsembleStep],
    visiting: set[int],
) -> str | None:
    """A tensor `tensor` depends on that no path from the ensemble inputs writes (a tensor
    nobody writes, or one on a cycle); None when `tensor` is connected."""
    if tensor in inputs:
        return None
    index = producer.get(tensor)
    if index is None or index in visiting:
        return tensor
    visiting.add(index)
    for source in steps[index].input_map.values():
        missing = _unconnected(source, inputs, producer, steps, visiting)
        if missing is not None:
            return missing
    visiting.discard(index)
    return None


class EnsembleScheduler:
    """Runs one ensemble version: each request walks the step DAG."""

    def __init__(
        self,
        config: ModelConfig,
        services: InferenceServices,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        self.name = str(config.name)
        self._on_batch = on_batch  # one execution per request that ran its steps, as Triton
        self.steps = ensemble_steps(config)
        # what each step reads, writes and asks for, fixed at load: a request only looks them up
        self._reads = [tuple(step.input_map.items()) for step in self.steps]
        self._writes = [tuple(step.output_map.items()) for step in self.steps]
        self._requested = [
            tuple(RequestedOutput(name) for name in step.output_map) for step in self.steps
        ]
        self.output_names = [output.name for output in config.output]
        self._services = services
        self._inflight = InFlight()

    @property
    def pending_count(self) -> int:
        """Ensembles queue nothing themselves: their steps queue at the composing models."""
        return 0

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        priority: int = 0,
        timeout_us: int = 0,
        request: InferenceRequest | None = None,
    ) -> tuple[dict[str, np.ndarray], RequestTiming]:
        """Run every step once its tensors exist; the ensemble outputs when all are written."""
        with self._inflight.admit():
            started = time.perf_counter()
            tensors = await self._run_steps(dict(inputs), priority, timeout_us, request)
        elapsed = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(BatchResult(rows, 1, 0.0, elapsed, 0.0, True))
        outputs = {name: tensors[name] for name in self.output_names if name in tensors}
        return outputs, RequestTiming(0.0, 0.0, elapsed, 0.0, rows)

    async def _run_steps(
        self,
        tensors: dict[str, np.ndarray],
        priority: int,
        timeout_us: int,
        request: InferenceRequest | None,
    ) -> dict[str, np.ndarray]:
        waiting = list(range(len(self.steps)))
        running: dict[asyncio.Task[Mapping[str, np.ndarray]], int] = {}
        try:
            while waiting or running:
                ready = [i for i in waiting if self._ready(i, tensors)]
                for index in ready:
                    waiting.remove(index)
                if len(ready) == 1 and not running:  # a chain: no task, no wait set
                    index = ready[0]
                    step_request = self._step_request(index, tensors, priority, timeout_us, request)
                    self._store(index, await self._run_step(step_request), tensors)
                    continue
                for index in ready:
                    step_request = self._step_request(index, tensors, priority, timeout_us, request)
                    running[asyncio.ensure_future(self._run_step(step_request))] = index
                if not running:  # validated at load; only a step that wrote too little gets here
                    raise ServingError(
                        ErrorKind.INTERNAL,
                        f"in ensemble '{self.name}', steps {waiting} can never run: their "
                        "inputs were not produced",
                    )
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._store(running.pop(task), task.result(), tensors)
        finally:
            for task in running:
                task.cancel()
        return tensors

    def _store(
        self, index: int, produced: Mapping[str, np.ndarray], tensors: dict[str, np.ndarray]
    ) -> None:
        for step_output, tensor in self._writes[index]:
            if step_output in produced:
                tensors[tensor] = produced[step_output]

    def _ready(self, index: int, tensors: Mapping[str, np.ndarray]) -> bool:
        return all(source in tensors for _, source in self._reads[index])

    def _step_request(
        self,
        index: int,
        tensors: Mapping[str, np.ndarray],
        priority: int,
        timeout_us: int,
        request: InferenceRequest | None,
    ) -> InferenceRequest:
        step = self.steps[index]
        return InferenceRequest(
            model_name=step.model_name,
            model_version=step.model_version,
            inputs={step_input: tensors[tensor] for step_input, tensor in self._reads[index]},
            id=request.id if request is not None else "",
            requested_outputs=self._requested[index],
            parameters=request.parameters if request is not None else {},
            priority=priority,
            timeout_us=timeout_us,
            protocol=request.protocol if request is not None else "ensemble",
            sequence_id=request.sequence_id if request is not None else 0,
            sequence_start=request.sequence_start if request is not None else False,
            sequence_end=request.sequence_end if request is not None else False,
            # who asked, for the steps' request log lines (their traces follow the ensemble's)
            client=request.client if request is not None else "",
            traceparent=request.traceparent if request is not None else "",
        )

    async def _run_step(self, request: InferenceRequest) -> Mapping[str, np.ndarray]:
        try:
            response = await self._services.infer(request)
        except ServingError as exc:
            raise ServingError(exc.kind, f"in ensemble '{self.name}', {exc.message}") from None
        return response.outputs  # read once by _store, never changed: no copy

    async def drain(self) -> None:
        """Stop accepting and wait for requests in flight."""
        await self._inflight.drain()


def ensemble_scheduler(
    config: ModelConfig, services: Any, on_batch: Callable[[BatchResult], None] | None = None
) -> EnsembleScheduler:
    """Build the scheduler of an ensemble version (services: the data plane)."""
    if services is None:
        raise ServingError(ErrorKind.INTERNAL, "ensembles need the server's inference entry")
    return EnsembleScheduler(config, services, on_batch)
