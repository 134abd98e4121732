"""A failed batch is bisected so that only the requests at fault fail (fault_isolation.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from server.batching import Batcher, BatchResult
from server.errors import ErrorKind, ServingError
from server.fault_isolation import isolate_failure, worth_isolating
from tests.unit.server.test_batcher import RecordingRuntime, policy, rows


class PickyRuntime(RecordingRuntime):
    """Doubles its input, but rejects a batch holding a negative value (as ORT rejects token
    ids beyond the vocabulary), or fails every batch with `failure` when set."""

    def __init__(self, failure: ServingError | None = None) -> None:
        super().__init__()
        self.failure = failure

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append([int(v) for v in x[:, 0]])
        if self.failure is not None:
            raise self.failure
        if (x < 0).any():
            raise ServingError(
                ErrorKind.INVALID_ARG, f"indices element out of data bounds, {x.min()}"
            )
        return {"y": x * 2}


async def _burst(
    runtime: PickyRuntime, values: list[int], executions: list[BatchResult]
) -> list[object]:
    batcher = Batcher([runtime], policy(max_queue_delay_s=0.05), ["y"], on_batch=executions.append)
    results = await asyncio.gather(
        *(batcher.submit(rows(v), 1) for v in values), return_exceptions=True
    )
    await batcher.drain()
    return results


def test_only_the_bad_requests_fail_and_every_execution_is_reported() -> None:
    runtime, executions = PickyRuntime(), []
    values = [1, 2, -3, 4, 5, 6, -7, 8]
    results = asyncio.run(_burst(runtime, values, executions))
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, ServingError) and result.kind == ErrorKind.INVALID_ARG
            assert str(value) in result.message  # its own failure, not the batch's
        else:
            outputs, timing = result  # type: ignore[misc]
            assert outputs["y"][0, 0] == 2 * value and timing.batch_size < len(values)
    assert runtime.batches[0] == values  # one batch formed, then the search
    assert len(runtime.batches) - 1 <= 2 * len(values) - 2
    assert len(executions) == len(runtime.batches)
    assert [e.success for e in executions].count(False) >= 3  # the batch + the two culprits
    assert sum(e.request_count for e in executions if e.success) == 6  # each good one once


@pytest.mark.parametrize(
    "failure",
    [
        ServingError(
            ErrorKind.INTERNAL, "onnxruntime execution failed: CUDA failure 2: out of memory"
        ),
        ServingError(ErrorKind.UNAVAILABLE, "upstream Triton at 10.0.0.1:8001 is unreachable"),
        ServingError(
            ErrorKind.INTERNAL,
            "output 'y' ...: the model's first dimension is not a batch dimension",
        ),
    ],
)
def test_failures_that_are_not_about_the_data_fail_the_batch_without_a_search(
    failure: ServingError,
) -> None:
    runtime, executions = PickyRuntime(failure), []
    results = asyncio.run(_burst(runtime, [1, 2, 3, 4], executions))
    assert all(r is failure for r in results)
    assert len(runtime.batches) == 1 and len(executions) == 1 and not executions[0].success


def test_a_lone_request_is_not_re_run() -> None:
    runtime, executions = PickyRuntime(), []
    (result,) = asyncio.run(_burst(runtime, [-1], executions))
    assert isinstance(result, ServingError) and len(runtime.batches) == 1


@pytest.mark.parametrize("bad", [0, 1, 3, 32])
def test_search_cost_is_bounded(bad: int) -> None:
    """k culprits among n: about 2k·log2(n/k) re-executions, never more than 2n - 2."""
    n = 32
    culprits = {i * n // bad for i in range(bad)}
    runs: list[list[int]] = []

    def run(part: list[int]) -> tuple[list[dict[str, object]], tuple[float, float, float], int]:
        runs.append(part)
        if culprits & set(part):
            raise ServingError(ErrorKind.INVALID_ARG, "bad data")
        return [{} for _ in part], (0.0, 0.0, 0.0), len(part)

    outcome = isolate_failure(
        ServingError(ErrorKind.INVALID_ARG, "bad data"), list(range(n)), lambda m: 1, run
    )
    assert set(outcome.errors) == culprits and set(outcome.outputs) == set(range(n)) - culprits
    assert len(runs) <= 2 * n - 2
    if 0 < bad < n:
        assert len(runs) <= 2 * bad * (math.log2(n / bad) + 1)
    assert len(outcome.executions) == len(runs) + 1


def test_which_failures_are_searched() -> None:
    assert worth_isolating(
        ServingError(ErrorKind.INVALID_ARG, "indices element out of data bounds")
    )
    assert worth_isolating(ValueError("a kernel failed"))
    assert not worth_isolating(MemoryError())
    assert not worth_isolating(ServingError(ErrorKind.INTERNAL, "Failed to allocate memory"))
    assert not worth_isolating(ServingError(ErrorKind.CANCELLED, "cancelled"))
