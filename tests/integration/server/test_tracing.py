"""Request traces of a real `ferry serve`, received by an OTLP/HTTP collector the test runs:
span structure, the W3C traceparent honoured over HTTP and gRPC, the trace settings API turning
tracing on and off, Triton's trace file mode, the same three spans a real tritonserver exports
for the same request, and the same trace tree (spans, and `parent_id` in the trace file) for a
request to an ensemble of the same Python model served by both."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.onnx_models import mlp_model, write_model
from tests.support.otlp_collector import OtlpCollector, ReceivedSpan, running_collector
from tests.support.python_models import write_ensemble
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver, write_linear_model

FERRY_SPANS = {"InferRequest", "mlp", "queue", "compute", "compute_input", "compute_infer"}
FERRY_SPANS |= {"compute_output"}


def otel_flags(collector: OtlpCollector, *more: str) -> list[str]:
    flags = ["mode=opentelemetry", "level=TIMESTAMPS", *more]
    flags += [f"opentelemetry,url={collector.url}", "opentelemetry,bsp_schedule_delay=50"]
    return [arg for flag in flags for arg in ("--trace-config", flag)]


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with running_collector() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpCollector
) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("trace-repo")
    write_model(repo, "mlp", mlp_model(), "max_batch_size: 8\n")
    with running_server(repo, *otel_flags(collector, "rate=1")) as process:
        yield process


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def http_infer(server: ServerProcess, request_id: str, headers: dict[str, str] | None = None):
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = httpclient.InferInput("input", [2, 16], "FP32")
        x.set_data_from_numpy(np.ones((2, 16), np.float32))
        client.infer("mlp", [x], request_id=request_id, headers=headers)


def one_trace(collector: OtlpCollector, trace_id: str, count: int) -> dict[str, ReceivedSpan]:
    spans = collector.wait_for(lambda s: sum(x.trace_id == trace_id for x in s) >= count)
    return {s.name: s for s in spans if s.trace_id == trace_id}


def check_structure(spans: dict[str, ReceivedSpan], parent_span_id: str, request_id: str) -> None:
    assert set(spans) == FERRY_SPANS
    root, model, compute = spans["InferRequest"], spans["mlp"], spans["compute"]
    assert root.parent_span_id == parent_span_id
    assert model.parent_span_id == root.span_id
    assert spans["queue"].parent_span_id == model.span_id == compute.parent_span_id
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert spans[part].parent_span_id == compute.span_id
        assert compute.start_ns <= spans[part].start_ns <= spans[part].end_ns <= compute.end_ns
    assert root.start_ns <= model.start_ns <= spans["queue"].start_ns
    assert spans["queue"].end_ns == compute.start_ns and compute.end_ns <= model.end_ns
    assert model.attributes["triton.model_name"] == "mlp"
    assert model.attributes["triton.model_version"] == 1
    assert model.attributes["triton.request_id"] == request_id
    assert [e[0] for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [e[0] for e in compute.events] == [
        "COMPUTE_START",
        "COMPUTE_INPUT_END",
        "COMPUTE_OUTPUT_START",
        "COMPUTE_END",
    ]
    assert root.resource["service.name"] == "ferry"


def test_http_traceparent_is_the_parent(server: ServerProcess, collector: OtlpCollector) -> None:
    header, trace_id, span_id = traceparent()
    http_infer(server, "traced-http", {"traceparent": header})
    spans = one_trace(collector, trace_id, len(FERRY_SPANS))
    check_structure(spans, span_id, "traced-http")
    assert spans["InferRequest"].attributes["ferry.protocol"] == "http"
    assert str(spans["InferRequest"].attributes["client.address"]).startswith("127.0.0.1:")


def test_grpc_traceparent_is_the_parent(server: ServerProcess, collector: OtlpCollector) -> None:
    header, trace_id, span_id = traceparent()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        x = grpcclient.InferInput("input", [2, 16], "FP32")
        x.set_data_from_numpy(np.ones((2, 16), np.float32))
        client.infer("mlp", [x], request_id="traced-grpc", headers={"traceparent": header})
    spans = one_trace(collector, trace_id, len(FERRY_SPANS))
    check_structure(spans, span_id, "traced-grpc")
    assert spans["InferRequest"].attributes["ferry.protocol"] == "grpc"


def test_without_traceparent_a_trace_of_its_own(
    server: ServerProcess, collector: OtlpCollector
) -> None:
    http_infer(server, "untraced-parent")
    spans = collector.wait_for(
        lambda s: any(x.attributes.get("triton.request_id") == "untraced-parent" for x in s)
    )
    model = next(s for s in spans if s.attributes.get("triton.request_id") == "untraced-parent")
    root = next(s for s in spans if s.span_id == model.parent_span_id)
    assert root.name == "InferRequest" and root.parent_span_id == ""


def post(server: ServerProcess, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def test_settings_turn_tracing_off_and_on(server: ServerProcess, collector: OtlpCollector) -> None:
    answer = post(server, "/v2/trace/setting", {"trace_level": ["OFF"]})
    assert answer["trace_level"] == ["OFF"]
    http_infer(server, "while-off")
    with grpcclient.InferenceServerClient(server.grpc_url) as client:  # on again, over gRPC
        settings = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        assert list(settings.settings["trace_level"].value) == ["TIMESTAMPS"]
    # a model of its own: every second request
    model = post(server, "/v2/models/mlp/trace/setting", {"trace_rate": "2"})
    assert model["trace_rate"] == "2" and model["trace_level"] == ["TIMESTAMPS"]
    for index in range(4):
        http_infer(server, f"halved-{index}")
    spans = collector.wait_for(
        lambda s: any(x.attributes.get("triton.request_id") == "halved-3" for x in s)
    )
    traced = {s.attributes.get("triton.request_id") for s in spans}
    assert "while-off" not in traced  # exported in order: it would have arrived by now
    assert {"halved-1", "halved-3"} <= traced and not {"halved-0", "halved-2"} & traced
    post(server, "/v2/models/mlp/trace/setting", {"trace_rate": None})


def test_triton_mode_writes_the_trace_file(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "mlp", mlp_model(), "max_batch_size: 8\n")
    trace_file = tmp_path / "trace.json"
    flags = ["rate=1,level=TIMESTAMPS", f"triton,file={trace_file}"]
    with running_server(
        tmp_path / "repo", *[arg for flag in flags for arg in ("--trace-config", flag)]
    ) as ferry:
        for index in range(3):
            http_infer(ferry, f"file-{index}")
    entries = json.loads(trace_file.read_text())
    headers = [e for e in entries if "model_name" in e]
    assert [e["request_id"] for e in headers] == ["file-0", "file-1", "file-2"]
    names = [
        e["timestamps"][0]["name"]
        for e in entries
        if e["id"] == headers[0]["id"] and "timestamps" in e
    ]
    assert names == [
        "REQUEST_START",
        "QUEUE_START",
        "COMPUTE_START",
        "COMPUTE_INPUT_END",
        "COMPUTE_OUTPUT_START",
        "COMPUTE_END",
        "REQUEST_END",
    ]


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_the_spans_triton_exports_are_there_with_the_same_structure(
    tmp_path: Path, collector: OtlpCollector, server: ServerProcess
) -> None:
    """Triton's three spans for a traced request (InferRequest > model > compute), with the
    same parents, model-span attributes and compute events; ferry adds finer spans."""
    write_linear_model(tmp_path, "mlp", max_batch_size=8)  # Triton serves a model named mlp
    header, trace_id, span_id = traceparent()
    with running_tritonserver(tmp_path, *otel_flags(collector, "rate=1")) as triton:
        with httpclient.InferenceServerClient(triton.http_url) as client:
            x = httpclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer("mlp", [x], request_id="both", headers={"traceparent": header})
        theirs = one_trace(collector, trace_id, 3)
    ferry_header, ferry_trace, ferry_span = traceparent()
    http_infer(server, "both", {"traceparent": ferry_header})
    ours = one_trace(collector, ferry_trace, len(FERRY_SPANS))
    assert set(theirs) == {"InferRequest", "mlp", "compute"} <= set(ours)
    for spans, parent in ((theirs, span_id), (ours, ferry_span)):
        assert spans["InferRequest"].parent_span_id == parent
        assert spans["mlp"].parent_span_id == spans["InferRequest"].span_id
        assert spans["compute"].parent_span_id == spans["mlp"].span_id
    assert set(theirs["mlp"].attributes) <= set(ours["mlp"].attributes)
    for name in ("mlp", "compute"):
        assert [e[0] for e in theirs[name].events] == [e[0] for e in ours[name].events]


ENSEMBLE_OVER_LINEAR = """max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
ensemble_scheduling { step [{ model_name: "linear" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }] }
"""
SERVERS: dict[str, Callable[..., Any]] = {"triton": running_tritonserver, "ferry": running_server}
MODEL_STAMPS = ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END")
MODEL_STAMPS += ("COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END")


def write_pipeline(repo: Path) -> None:
    write_linear_model(repo, "linear", max_batch_size=8)
    write_ensemble(repo, "pipeline", ENSEMBLE_OVER_LINEAR)


def infer_pipeline(server: ServerProcess, headers: dict[str, str] | None = None) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = httpclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("pipeline", [x], request_id="pipe", headers=headers)


def stamps(entries: list[dict[str, Any]], trace_id: int) -> list[str]:
    """A trace's model-level timestamp names in the file, in order (Triton adds the HTTP ones
    of the request to the ensemble's trace)."""
    return [
        stamp["name"]
        for entry in entries
        if entry["id"] == trace_id
        for stamp in entry.get("timestamps", ())
        if stamp["name"] in MODEL_STAMPS
    ]


def one_trace_spans(collector: OtlpCollector, trace_id: str, count: int) -> list[ReceivedSpan]:
    spans = collector.wait_for(lambda s: sum(x.trace_id == trace_id for x in s) >= count)
    return [span for span in spans if span.trace_id == trace_id]


def edges(spans: list[ReceivedSpan]) -> set[tuple[str, str]]:
    """(span, its parent span) by name; '' for the root."""
    names = {span.span_id: span.name for span in spans}
    return {(span.name, names.get(span.parent_span_id, "")) for span in spans}


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_ensemble_steps_are_spans_of_the_ensemble_request_as_in_triton(
    tmp_path: Path, collector: OtlpCollector
) -> None:
    write_pipeline(tmp_path)
    found: dict[str, list[ReceivedSpan]] = {}
    for name, run, count in (("triton", running_tritonserver, 4), ("ferry", running_server, 8)):
        header, trace_id, _ = traceparent()
        with run(tmp_path, *otel_flags(collector, "rate=1")) as server:
            infer_pipeline(server, {"traceparent": header})
            spans = one_trace_spans(collector, trace_id, count)
        found[name] = spans
    theirs, ours = edges(found["triton"]), edges(found["ferry"])
    # the step's model span under the ensemble's; the ensemble has no compute of its own
    assert theirs == {
        ("InferRequest", ""),
        ("pipeline", "InferRequest"),
        ("linear", "pipeline"),
        ("compute", "linear"),
    }
    assert ours - theirs == {
        ("queue", "linear"),
        ("compute_input", "compute"),
        ("compute_infer", "compute"),
        ("compute_output", "compute"),
    }
    for spans in found.values():
        by_name = {span.name: span.attributes for span in spans}
        assert by_name["linear"]["triton.trace_parent_id"] == by_name["pipeline"]["triton.trace_id"]
        assert by_name["pipeline"]["triton.trace_parent_id"] == 0
        assert by_name["linear"]["triton.request_id"] == "pipe"


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_ensemble_steps_in_the_trace_file_as_in_triton(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "repo")
    found = {}
    for name, run in SERVERS.items():
        trace_file = tmp_path / f"{name}.json"
        flags = ["rate=1", "level=TIMESTAMPS", f"triton,file={trace_file}"]
        with run(
            tmp_path / "repo", *[arg for flag in flags for arg in ("--trace-config", flag)]
        ) as server:
            infer_pipeline(server)
        entries = json.loads(trace_file.read_text())
        models = {e["id"]: e["model_name"] for e in entries if "model_name" in e}
        found[name] = {
            (e["model_name"], models.get(e.get("parent_id"), ""), tuple(stamps(entries, e["id"])))
            for e in entries
            if "model_name" in e
        }
    assert found["ferry"] == found["triton"]
