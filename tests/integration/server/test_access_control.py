"""`--http-restricted-api` / `--grpc-restricted-protocol` with the unmodified tritonclient, on both
gRPC transports: model control, shared memory, statistics and model config need the admin key
while inference and metadata stay open; gRPC health needs its own key.
"""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, run_reference, write_model
from tests.support.server_process import ServerProcess, running_server

ADMIN_GROUPS = "model-repository,shared-memory,statistics,model-config"
ADMIN = {"admin-key": "admin-secret"}
WRONG = {"admin-key": "admin-secre"}
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": "admin-secret"}
GRPC_HEALTH = {"triton-grpc-protocol-health-key": "h"}
HTTP_REFUSAL = "This API is restricted, expecting header 'admin-key'"
GRPC_REFUSAL = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("restricted")
    write_model(repo, "linear", mlp_model(4, 8, 3, input_name="x", output_name="y"))
    return repo


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def server(repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with running_server(
        repository,
        "--grpc-transport",
        request.param,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "linear",
        "--allow-client-shm",
        "--http-restricted-api",
        f"{ADMIN_GROUPS}:admin-key=admin-secret",
        "--grpc-restricted-protocol",
        f"{ADMIN_GROUPS}:admin-key=admin-secret",
        "--grpc-restricted-protocol",
        "health:health-key=h",
    ) as process:
        yield process


def _x() -> np.ndarray:
    return np.arange(8, dtype=np.float32).reshape(2, 4) / 8


def _admin_calls(client: Any) -> dict[str, Callable[[dict[str, str]], Any]]:
    """One call per restricted group (and then some), each taking the headers to send."""
    return {
        "statistics": lambda h: client.get_inference_statistics("linear", headers=h),
        "all statistics": lambda h: client.get_inference_statistics(headers=h),
        "model config": lambda h: client.get_model_config("linear", headers=h),
        "repository index": lambda h: client.get_model_repository_index(headers=h),
        "load": lambda h: client.load_model("linear", headers=h),
        "shm status": lambda h: client.get_system_shared_memory_status(headers=h),
        "shm unregister": lambda h: client.unregister_system_shared_memory(headers=h),
        "cuda shm status": lambda h: client.get_cuda_shared_memory_status(headers=h),
    }


def _open_calls_work(client: Any, module: Any, repository: Path) -> None:
    x = module.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(_x())
    expected = run_reference(repository / "linear" / "1" / "model.onnx", {"x": _x()})["y"]
    np.testing.assert_allclose(client.infer("linear", [x]).as_numpy("y"), expected, rtol=1e-5)
    assert client.get_model_metadata("linear")
    assert client.get_server_metadata()


def test_http_admin_groups_need_the_key_inference_stays_open(
    server: ServerProcess, repository: Path
) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    _open_calls_work(client, httpclient, repository)
    assert client.is_server_live() and client.is_model_ready("linear")
    for name, call in _admin_calls(client).items():
        for headers in ({}, WRONG, {"Admin-Key-2": "admin-secret"}):
            with pytest.raises(InferenceServerException) as refused:
                call(headers)
            assert refused.value.status() == "403", name
            assert refused.value.message() == HTTP_REFUSAL, name
        call(ADMIN)  # admitted: does its work
        call({"ADMIN-KEY": "admin-secret"})  # header names are case-insensitive


def _raw(server: ServerProcess, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=b"{not json", method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v2/repository/index"),
        ("POST", "/v2/models/linear/config"),
        ("DELETE", "/v2/systemsharedmemory/status"),
        ("POST", "/v2/repository/models/linear/unload"),
        ("POST", "/v2/repository/models/no/such/model/load"),
        ("PUT", "/v2/models/linear/versions/1/stats"),
    ],
)
def test_http_refusal_comes_before_method_and_body(
    server: ServerProcess, method: str, path: str
) -> None:
    """As Triton: the key is checked first, whatever the method or body."""
    assert _raw(server, method, path, {}) == (403, {"error": HTTP_REFUSAL})
    status, _ = _raw(server, method, path, ADMIN)
    assert status in (400, 404, 405)  # admitted: the route's own answer to a bad request


def test_grpc_admin_groups_need_the_key_inference_stays_open(
    server: ServerProcess, repository: Path
) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    _open_calls_work(client, grpcclient, repository)
    for name, call in _admin_calls(client).items():
        # the HTTP header name is not the gRPC key: Triton's prefix is needed
        for headers in ({}, ADMIN, {"triton-grpc-protocol-admin-key": "admin-secre"}):
            with pytest.raises(InferenceServerException) as refused:
                call(headers)
            assert refused.value.status() == "StatusCode.UNAVAILABLE", name
            assert refused.value.message() == GRPC_REFUSAL, name
        call(GRPC_ADMIN)


def test_grpc_streaming_inference_stays_open(server: ServerProcess, repository: Path) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: results.put((result, error)))
    try:
        x = grpcclient.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(_x())
        client.async_stream_infer("linear", [x])
        result, error = results.get(timeout=30)
        assert error is None
        assert result.as_numpy("y").shape == (2, 3)
    finally:
        client.stop_stream()


def test_grpc_health_behind_its_own_key(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    refusal = "This protocol is restricted, expecting header 'triton-grpc-protocol-health-key'"
    for call in (
        lambda h: client.is_server_live(headers=h),
        lambda h: client.is_server_ready(headers=h),
        lambda h: client.is_model_ready("linear", headers=h),
    ):
        with pytest.raises(InferenceServerException, match=refusal):
            call({"health-key": "h"})
        assert call(GRPC_HEALTH) is True
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        answer = health.Check(
            health_pb2.HealthCheckRequest(),
            metadata=[("triton-grpc-protocol-health-key", "h")],
            timeout=10,
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_unrestricted_groups_need_no_key(server: ServerProcess) -> None:
    """trace and logging are not restricted here: served without any key, on both transports
    (the Triton differential test covers the restricted ones)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert "trace_level" in client.get_trace_settings(as_json=True)["settings"]
    assert "log_info" in client.get_log_settings(as_json=True)["settings"]
