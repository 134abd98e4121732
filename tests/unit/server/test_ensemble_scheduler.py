"""The ensemble scheduler walks the step DAG: a chain step by step, independent steps at once,
a failing step fails the request with its kind and the ensemble's prefix. The composing models
are a fake inference entry (the data plane's role) that records the calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

from server.ensemble import EnsembleScheduler
from server.errors import ErrorKind, ServingError
from server.repository_format import parse_config
from server.types import InferenceRequest, InferenceResponse

CONFIG = """name: "e" platform: "ensemble" max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [2] }]
ensemble_scheduling { step [
  { model_name: "plus_one" input_map { key: "IN" value: "X" }
    output_map { key: "OUT" value: "a" } },
  { model_name: "double" input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "b" } },
  { model_name: "add" input_map { key: "L" value: "a" } input_map { key: "R" value: "b" }
    output_map { key: "OUT" value: "Y" } }
] }
"""


class FakeModels:
    """plus_one, double and add; `double` waits until plus_one has started (so the two must run
    at the same time); `fail` makes a model answer an error."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[InferenceRequest] = []
        self.plus_one_started = asyncio.Event()
        self.fail = fail

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.calls.append(request)
        if request.model_name == self.fail:
            raise ServingError(ErrorKind.INVALID_ARG, f"{self.fail} refuses")
        inputs = request.inputs
        if request.model_name == "plus_one":
            self.plus_one_started.set()
            await asyncio.sleep(0.01)
            out = inputs["IN"] + 1
        elif request.model_name == "double":
            await asyncio.wait_for(self.plus_one_started.wait(), 1.0)
            out = inputs["IN"] * 2
        else:
            out = inputs["L"] + inputs["R"]
        return InferenceResponse(request.model_name, "1", {"OUT": out})

    def infer_stream(self, request: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        raise NotImplementedError

    def check_request(self, request: InferenceRequest) -> bool:
        return False

    def model_ready(self, name: str, version: str = "") -> bool:
        return True

    async def load_model(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        raise NotImplementedError

    async def unload_model(self, name: str) -> None:
        raise NotImplementedError


def run(models: FakeModels, x: np.ndarray) -> dict[str, np.ndarray]:
    async def scenario() -> dict[str, np.ndarray]:
        scheduler = EnsembleScheduler(parse_config(CONFIG), models)
        request = InferenceRequest("e", "", {"X": x}, id="req-1", parameters={"k": "v"})
        outputs, timing = await scheduler.submit({"X": x}, len(x), request=request)
        assert timing.batch_size == len(x)
        await scheduler.drain()
        return outputs

    return asyncio.run(scenario())


def test_independent_steps_run_together_and_the_last_waits_for_both() -> None:
    models = FakeModels()
    x = np.array([[1.0, 2.0]], np.float32)
    outputs = run(models, x)
    np.testing.assert_array_equal(outputs["Y"], (x + 1) + (x * 2))
    assert [c.model_name for c in models.calls][-1] == "add"
    assert {c.id for c in models.calls} == {"req-1"}  # the request's id and parameters travel
    assert all(c.parameters == {"k": "v"} for c in models.calls)
    assert models.calls[-1].requested_outputs is not None
    assert [r.name for r in models.calls[-1].requested_outputs] == ["OUT"]


def test_a_failing_step_fails_the_request_with_its_kind_and_the_ensemble_prefix() -> None:
    with pytest.raises(ServingError) as caught:
        run(FakeModels(fail="add"), np.zeros((1, 2), np.float32))
    assert caught.value.kind == ErrorKind.INVALID_ARG
    assert caught.value.message == "in ensemble 'e', add refuses"


def test_a_draining_ensemble_refuses_new_requests() -> None:
    async def scenario() -> None:
        scheduler = EnsembleScheduler(parse_config(CONFIG), FakeModels())
        await scheduler.drain()
        with pytest.raises(ServingError, match="shutting down"):
            await scheduler.submit({"X": np.zeros((1, 2), np.float32)}, 1)

    asyncio.run(scenario())
