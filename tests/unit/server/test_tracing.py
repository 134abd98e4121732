"""Traces of ensemble steps: children of their ensemble request's trace (Triton's `parent_id`),
never sampled on their own; a model that is not an ensemble hands no parent to what it starts."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from server.trace_settings import TraceSettings, parse_trace_config
from server.tracing import RequestTrace, Tracer, enter_steps, leave_steps
from server.types import InferenceRequest


async def run(tracer: Tracer, model: str, steps: tuple[str, ...] = ()) -> RequestTrace | None:
    """What the data plane does for one request: start, submit (the steps run as tasks, which
    copy the context), finish."""
    trace = tracer.start(model, "1", InferenceRequest(model, "1", {}, id=f"{model}-request"))
    token = enter_steps(trace, bool(steps))
    try:
        await asyncio.gather(*(run(tracer, step) for step in steps))
    finally:
        if token is not None:
            leave_steps(token)
    if trace is not None:
        trace.ended = time.perf_counter()
        tracer.finish(trace)
    return trace


def test_steps_are_traced_with_their_ensemble_request(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    setting = parse_trace_config(["rate=2,level=TIMESTAMPS", f"triton,file={path}"])
    tracer = Tracer(TraceSettings(setting))

    async def requests() -> list[RequestTrace | None]:
        return [
            await run(tracer, "pipeline", ("scale", "mlp")),  # 1st: not sampled, nor its steps
            await run(tracer, "pipeline", ("scale", "mlp")),  # 2nd: sampled with its steps
            await run(tracer, "mlp"),  # 3rd: the steps did not count
            await run(tracer, "mlp"),
        ]

    traces = asyncio.run(requests())
    tracer.close()
    assert [t is not None for t in traces] == [False, True, False, True]
    headers = [entry for entry in json.loads(path.read_text()) if "model_name" in entry]
    ensemble = traces[1]
    assert ensemble is not None
    assert headers[0] == {
        "id": ensemble.trace_id,
        "model_name": "pipeline",
        "model_version": 1,
        "request_id": "pipeline-request",
    }
    assert sorted((h["model_name"], h.get("parent_id")) for h in headers[1:3]) == [
        ("mlp", ensemble.trace_id),
        ("scale", ensemble.trace_id),
    ]
    assert [(h["model_name"], h.get("parent_id")) for h in headers[3:]] == [("mlp", None)]


def test_a_model_that_runs_no_steps_hands_no_parent_on(tmp_path: Path) -> None:
    setting = parse_trace_config(["rate=1,level=TIMESTAMPS", f"triton,file={tmp_path / 't'}"])
    tracer = Tracer(TraceSettings(setting))
    request = InferenceRequest("m", "1", {})

    async def inside_an_untraced_ensemble() -> tuple[bool, bool]:
        outer = enter_steps(None, runs_steps=True)  # an ensemble request that is not traced
        step_traced = tracer.start("step", "1", request) is not None
        inner = enter_steps(None, runs_steps=False)  # the step's own scheduler
        started_later = tracer.start("bls", "1", request) is not None  # e.g. its process calls
        assert inner is not None and outer is not None
        leave_steps(inner)
        leave_steps(outer)
        return step_traced, started_later

    assert asyncio.run(inside_an_untraced_ensemble()) == (False, True)
