"""The log of a real `ferry serve` for a known sequence of requests: one line per request with
--log-requests (JSON), only the server's own failures without it (text), model state changes
once, third-party libraries quiet; lines for decoupled streams, for an ensemble and its steps,
and an ensemble that stops being ready when its composing model goes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import concat_model, mlp_model, write_model
from tests.support.python_models import stream_repeat, write_ensemble, write_repeat
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import write_linear_model

BROKEN_WARMUP = """max_batch_size: 8
model_warmup [{ name: "too_narrow" batch_size: 1
  inputs { key: "input" value { data_type: TYPE_FP32 dims: [15] zero_data: true } } }]
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("logs-repo")
    write_model(repo, "mlp", mlp_model(), "max_batch_size: 8\n")
    write_model(repo, "concat", concat_model(), "max_batch_size: 0\n")
    write_model(repo, "broken", mlp_model(), BROKEN_WARMUP)
    return repo


def send_known_sequence(server: ServerProcess, successes: int = 1) -> None:
    """HTTP and gRPC successes, a 400, an unknown model and a model failure (500)."""
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    good = np.ones((2, 16), np.float32)
    for index in range(successes):
        x = httpclient.InferInput("input", [2, 16], "FP32")
        x.set_data_from_numpy(good)
        http.infer("mlp", [x], request_id=f"http-{index}")
    g = grpcclient.InferInput("input", [2, 16], "FP32")
    g.set_data_from_numpy(good)
    grpc.infer("mlp", [g], request_id="grpc-0")
    bad = httpclient.InferInput("input", [1, 15], "FP32")
    bad.set_data_from_numpy(np.ones((1, 15), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        http.infer("mlp", [bad], request_id="bad-shape")
    with pytest.raises(InferenceServerException, match="unknown model"):
        grpc.infer("nosuch", [g], request_id="unknown")
    a, b = httpclient.InferInput("a", [1, 2], "FP32"), httpclient.InferInput("b", [1, 3], "FP32")
    a.set_data_from_numpy(np.ones((1, 2), np.float32))
    b.set_data_from_numpy(np.ones((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="mismatched dimensions"):
        http.infer("concat", [a, b], request_id="model-fails")  # a 500
    http.close()
    grpc.close()


def json_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_one_json_line_per_request(repository: Path) -> None:
    with running_server(
        repository,
        "--log-requests",
        "--log-requests-rate",
        "0.5",
        "--log-format",
        "json",
        "--no-strict-readiness",
    ) as server:
        send_known_sequence(server, successes=11)
    entries = json_lines(server.log())
    assert entries, server.log()  # every line is JSON
    requests = [e for e in entries if e["logger"] == "ferry.requests"]
    successes = [e for e in requests if e["level"] == "INFO" and e["status"] in ("200", "OK")]
    assert len(successes) == 6  # 12 successes at rate 0.5: every second one (gRPC last)
    grpc_line = next(e for e in requests if e["protocol"] == "grpc" and e["status"] == "OK")
    assert grpc_line["request_id"] == "grpc-0" and grpc_line["batch_size"] == 2
    assert str(grpc_line["client"]).startswith("127.0.0.1:")
    failures = {e["request_id"]: e for e in requests if e not in successes}
    assert set(failures) == {"bad-shape", "unknown", "model-fails"}  # never sampled out
    assert failures["bad-shape"]["status"] == "400"
    assert failures["bad-shape"]["level"] == "INFO"
    assert failures["unknown"]["status"] == "NOT_FOUND" and failures["unknown"]["model"] == "nosuch"
    assert failures["model-fails"]["status"] == "500"
    assert failures["model-fails"]["level"] == "ERROR"
    for entry in requests:
        assert {
            "time",
            "protocol",
            "model",
            "version",
            "status",
            "latency_ms",
            "batch_size",
        } <= set(entry)
        assert {"request_id", "client"} <= set(entry)


def test_without_log_requests_only_server_failures_and_model_changes(repository: Path) -> None:
    with running_server(
        repository,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--no-strict-readiness",
    ) as server:
        send_known_sequence(server)
        with httpclient.InferenceServerClient(server.http_url) as client:
            client.unload_model("mlp")
    lines = server.log().splitlines()
    request_lines = [line for line in lines if "ferry.requests" in line]
    assert len(request_lines) == 1, request_lines  # the model's failure, once
    assert " ERROR ferry.requests: inference failed " in request_lines[0]
    assert "status=500" in request_lines[0] and "request_id=model-fails" in request_lines[0]
    assert sum("'broken'" in line for line in lines) == 1  # its failed load, logged once
    broken = next(line for line in lines if "'broken'" in line)
    assert " ERROR ferry.models: model 'broken' version 1 failed to load: " in broken
    assert "failed to run warmup sample 'too_narrow'" in broken
    assert sum("model 'mlp' version 1 unloaded" in line for line in lines) == 1
    assert any(" WARNING ferry.models: model 'mlp' version 1 unloaded" in line for line in lines)
    assert not any("uvicorn" in line for line in lines)  # third-party INFO lines stay out


ENSEMBLE_OVER_LINEAR = """max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
ensemble_scheduling { step [{ model_name: "linear" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }] }
"""


def test_streams_ensembles_and_their_state_changes(tmp_path: Path) -> None:
    write_linear_model(tmp_path, "linear", max_batch_size=8)
    write_ensemble(tmp_path, "pipeline", ENSEMBLE_OVER_LINEAR)
    write_repeat(tmp_path)
    flags = ("--log-requests", "--log-format", "json", "--model-control-mode", "explicit")
    with running_server(tmp_path, *flags, "--load-model", "*", ready=False) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        deadline = time.monotonic() + 60
        while not http.is_model_ready("pipeline"):
            assert time.monotonic() < deadline, http.get_model_repository_index()
            time.sleep(0.1)
        x = httpclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        http.infer("pipeline", [x], request_id="pipe")
        assert [item[1] for item in stream_repeat(server.grpc_url, 3, True)] == [0, 1, 2, None]
        assert ("error", "response 2 of 5 fails") in stream_repeat(server.grpc_url, 5, True)
        n = httpclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([1], np.int32))
        with pytest.raises(InferenceServerException, match="decoupled"):
            http.infer("repeat", [n], request_id="unary")
        http.unload_model("linear")
        http.close()
    entries = json_lines(server.log())
    requests = {}
    for entry in (e for e in entries if e["logger"] == "ferry.requests"):
        requests.setdefault(entry["request_id"], []).append(entry)
    # the ensemble request and its step: one line each, with the client's address
    pipe = {entry["model"]: entry for entry in requests["pipe"]}
    assert set(pipe) == {"pipeline", "linear"} and len(requests["pipe"]) == 2
    assert pipe["pipeline"]["client"] == pipe["linear"]["client"] != ""
    assert all(entry["status"] == "200" for entry in pipe.values())
    # a stream is one request: its line once its final response is sent
    [three] = requests["n3"]
    assert (three["model"], three["protocol"], three["status"]) == ("repeat", "grpc", "OK")
    [five] = requests["n5"]  # a failed response inside the stream fails the request
    assert five["level"] == "ERROR" and "response 2 of 5 fails" in str(five["error"])
    [unary] = requests["unary"]  # a decoupled model asked for one response: 501
    assert (unary["level"], unary["status"]) == ("WARNING", "501")
    # the composing model unloaded: the ensemble is not ready, said once
    models = [e["message"] for e in entries if e["logger"] == "ferry.models"]
    assert models.count("model 'linear' version 1 unloaded") == 1
    not_ready = [m for m in models if m.startswith("model 'pipeline' version 1 is not ready: ")]
    assert len(not_ready) == 1, models
