"""The logging and trace extensions against the real tritonserver: the same sequence of settings
requests (HTTP and gRPC) to both, started with the same --trace-config flags, gets the same
statuses, the same JSON keys and the same trace setting values.

Deliberate differences (README): values of the wrong JSON type are 400 (Triton: 500, a JSON
parse error), an unknown trace level is refused (Triton ignores it), log_format also takes
ferry's `json` and reports `text` for Triton's `default`/`ISO8601`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver, write_linear_model

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

MODES = {
    "triton": ["rate=100"],
    "opentelemetry": [
        "mode=opentelemetry",
        "rate=50",
        "opentelemetry,url=http://127.0.0.1:9/v1/traces",  # nothing is traced in this test
    ],
}
HTTP_CORPUS: list[tuple[str, str, Any]] = [
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", {"log_verbose_level": 1}),
    ("POST", "/v2/logging", {"log_info": False, "log_warning": True}),
    ("POST", "/v2/logging", {"log_file": "/tmp/elsewhere.log"}),
    ("POST", "/v2/logging", {"log_file": None, "bogus": 1}),
    ("POST", "/v2/logging", {}),
    ("POST", "/v2/logging", {"log_info": True, "log_verbose_level": 0}),
    ("GET", "/v2/trace/setting", None),
    ("POST", "/v2/trace/setting", {"trace_rate": "5"}),
    ("POST", "/v2/trace/setting", {"trace_count": "20"}),
    ("POST", "/v2/trace/setting", {"trace_rate": "x"}),
    ("POST", "/v2/trace/setting", {"trace_count": "-2"}),
    ("POST", "/v2/trace/setting", {"trace_level": ["OFF", "TIMESTAMPS"]}),
    ("POST", "/v2/trace/setting", {"trace_file": "/tmp/other.json"}),
    ("POST", "/v2/trace/setting", {"log_frequency": "3"}),
    ("GET", "/v2/models/mlp/trace/setting", None),
    ("POST", "/v2/models/mlp/trace/setting", {"trace_rate": "7"}),
    ("POST", "/v2/trace/setting", {"trace_count": "9"}),  # the model follows unset fields
    ("GET", "/v2/models/mlp/trace/setting", None),
    ("POST", "/v2/models/mlp/trace/setting", {"trace_rate": None}),
    ("GET", "/v2/models/nosuch/trace/setting", None),
    ("POST", "/v2/models/nosuch/trace/setting", {"trace_rate": "2"}),
    ("POST", "/v2/trace/setting", {"trace_rate": None, "trace_count": None}),
    ("GET", "/v2/trace/setting", None),
]
Outcome = tuple[int, Any]


def http_outcome(server: ServerProcess, method: str, path: str, body: Any) -> Outcome:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def comparable(path: str, answer: Any) -> Any:
    """What must be equal: every value of a trace setting, the keys and switches of a log
    setting (ferry names its own line formats)."""
    if "error" in answer:
        return sorted(answer)
    if path == "/v2/logging":
        return {key: value for key, value in answer.items() if key != "log_format"}
    return answer


def grpc_outcomes(server: ServerProcess) -> list[tuple[str, Any]]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    calls = [
        lambda: client.get_log_settings(as_json=True),
        lambda: client.update_log_settings({"log_verbose_level": 2}, as_json=True),
        lambda: client.update_log_settings({"log_info": False}, as_json=True),
        lambda: client.update_log_settings({"log_file": "/tmp/x.log"}, as_json=True),
        lambda: client.get_trace_settings(as_json=True),
        lambda: client.update_trace_settings(settings={"trace_rate": "3"}, as_json=True),
        lambda: client.update_trace_settings("mlp", {"trace_count": "4"}, as_json=True),
        lambda: client.get_trace_settings("mlp", as_json=True),
        lambda: client.update_trace_settings(settings={"trace_rate": "q"}, as_json=True),
        lambda: client.get_trace_settings("nosuch", as_json=True),
        lambda: client.update_trace_settings("mlp", {"trace_count": None}, as_json=True),
    ]
    outcomes: list[tuple[str, Any]] = []
    try:
        for call in calls:
            try:
                answer = call()["settings"]
                answer.pop("log_format", None)
                outcomes.append(("OK", answer))
            except InferenceServerException as error:
                outcomes.append((str(error.status()), error.message()))
    finally:
        client.close()
    return outcomes


@pytest.fixture(scope="module", params=sorted(MODES))
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    flags = [arg for flag in MODES[request.param] for arg in ("--trace-config", flag)]
    triton_repo: Path = tmp_path_factory.mktemp("triton-repo")
    write_linear_model(triton_repo, "mlp", max_batch_size=8)
    ferry_repo: Path = tmp_path_factory.mktemp("ferry-repo")
    write_model(ferry_repo, "mlp", mlp_model(4, 8, 3, input_name="x", output_name="y"))
    with (
        running_tritonserver(triton_repo, *flags) as triton,
        running_server(ferry_repo, *flags) as ferry,
    ):
        yield triton, ferry


def test_http_settings_answers_match_triton(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    triton, ferry = servers
    differences = []
    for method, path, body in HTTP_CORPUS:
        theirs = http_outcome(triton, method, path, body)
        ours = http_outcome(ferry, method, path, body)
        expected = (theirs[0], comparable(path, theirs[1]))
        if (ours[0], comparable(path, ours[1])) != expected:
            differences.append({"request": (method, path, body), "triton": theirs, "ferry": ours})
        if "error" in theirs[1] and theirs[0] == 400:  # the same words, where Triton's are clear
            assert ours[1]["error"] == theirs[1]["error"], (path, body)
    assert differences == []


def test_grpc_settings_answers_match_triton(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    triton, ferry = servers
    theirs, ours = grpc_outcomes(triton), grpc_outcomes(ferry)
    for expected, got in zip(theirs, ours, strict=True):
        assert got[0] == expected[0], (expected, got)
        if expected[0] == "OK":
            assert got[1] == expected[1]


def test_deliberate_differences(servers: tuple[ServerProcess, ServerProcess]) -> None:
    triton, ferry = servers
    for path, body in (
        ("/v2/logging", {"log_verbose_level": -1}),
        ("/v2/logging", {"log_info": "yes"}),
        ("/v2/trace/setting", {"trace_rate": 5}),
    ):
        assert http_outcome(triton, "POST", path, body)[0] == 500
        status, answer = http_outcome(ferry, "POST", path, body)
        assert status == 400 and "error" in answer
    assert http_outcome(triton, "POST", "/v2/logging", {"log_format": "json"})[0] == 503
    status, answer = http_outcome(ferry, "POST", "/v2/logging", {"log_format": "json"})
    assert status == 200 and answer["log_format"] == "json"
    http_outcome(ferry, "POST", "/v2/logging", {"log_format": "default"})
    assert http_outcome(triton, "POST", "/v2/trace/setting", {"trace_level": ["LOUD"]})[0] == 200
    assert http_outcome(ferry, "POST", "/v2/trace/setting", {"trace_level": ["LOUD"]})[0] == 400
