"""Running one sequence batch on an instance: a runtime gets the assembled tensors (worker
thread), a request runtime (a Python model) gets each row as a request with its control and
state tensors among the inputs. Each sequence takes its new state from the outputs."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.runtimes import RequestRuntime, Runtime
from server.sequence.slots import Step
from server.sequence.tensors import BatchAssembler
from server.types import RequestedOutput

# per request of the batch: its outputs (or its own error); compute input/infer/output seconds
Executed = tuple[list[Any], tuple[float, float, float]]


def execute_batch(assembler: BatchAssembler, runtime: Runtime, rows: list[Step | None]) -> Executed:
    """Worker thread: run the batch's tensors; every sequence takes its new state."""
    t0 = time.perf_counter()
    feeds = assembler.feeds(rows)
    t1 = time.perf_counter()
    outputs = runtime.infer(feeds, assembler.runtime_outputs)
    t2 = time.perf_counter()
    try:
        assembler.check_rows(outputs, len(rows))
    except ValueError as exc:
        raise ServingError(ErrorKind.INTERNAL, str(exc)) from None
    results = assembler.split(rows, outputs)
    per_request: list[Any] = []
    stateful = bool(assembler.policy.states)
    for step, (own, state) in zip((r for r in rows if r is not None), results, strict=True):
        if stateful:
            step.sequence.state = state
        per_request.append(own)
    return per_request, (t1 - t0, t2 - t1, time.perf_counter() - t2)


async def execute_requests(
    assembler: BatchAssembler, runtime: RequestRuntime, rows: list[Step | None]
) -> Executed:
    """Each row as a request with the control (and state) tensors among its inputs; a null
    row is a copy of the first request with zeros."""
    first = next(r for r in rows if r is not None)
    requested = (
        tuple(RequestedOutput(name) for name in assembler.runtime_outputs)
        if assembler.policy.states
        else None
    )
    requests = []
    for row, extra in zip(rows, assembler.row_extras(rows), strict=True):
        if row is None:
            base = replace(
                first.request,
                inputs={n: np.zeros_like(a) for n, a in first.inputs.items()},
                id="",
                sequence_id=0,
                sequence_start=False,
                sequence_end=False,
            )
        else:
            base = row.request
        requests.append(
            replace(
                base,
                inputs={**base.inputs, **extra},
                requested_outputs=requested or base.requested_outputs,
            )
        )
    t0 = time.perf_counter()
    outcomes = await runtime.execute(requests)
    t1 = time.perf_counter()
    per_request: list[Any] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if row is None:
            continue
        if isinstance(outcome, dict):
            if assembler.policy.states:
                row.sequence.state = assembler.new_state(outcome)
            outcome = assembler.request_outputs(outcome)
        per_request.append(outcome)
    return per_request, (0.0, t1 - t0, 0.0)
