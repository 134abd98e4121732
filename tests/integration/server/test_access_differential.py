"""Restricted APIs, differentially: the real `tritonserver` and `ferry serve` (both gRPC
transports) get the same `--http-restricted-api` / `--grpc-restricted-protocol` flags and the same
requests, with no key, a wrong key, the other group's key and the right key. Every refusal must
be the same answer (HTTP status and JSON body; gRPC code and message), and every request one of
them admits the other must admit too, with the same status.
"""

from __future__ import annotations

import contextlib
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import (
    require_tritonserver,
    running_tritonserver,
    write_linear_model,
)

pytestmark = pytest.mark.slow

ADMIN_GROUPS = "model-repository,shared-memory,statistics,model-config,trace,logging"
FLAGS = (
    f"--http-restricted-api={ADMIN_GROUPS}:admin-key=admin-secret",
    "--http-restricted-api=inference,metadata:infer-key=infer-secret",
    f"--grpc-restricted-protocol={ADMIN_GROUPS}:admin-key=admin-secret",
    "--grpc-restricted-protocol=inference,metadata,health:infer-key=infer-secret",
)
HTTP_HEADERS = {
    "none": {},
    "admin": {"admin-key": "admin-secret"},
    "admin, wrong value": {"admin-key": "admin-secret2"},
    "infer": {"infer-key": "infer-secret"},
}
GRPC_HEADERS = {
    "none": {},
    "admin": {"triton-grpc-protocol-admin-key": "admin-secret"},
    "admin, wrong value": {"triton-grpc-protocol-admin-key": "ADMIN-SECRET"},
    "admin, HTTP name": {"admin-key": "admin-secret"},
    "infer": {"triton-grpc-protocol-infer-key": "infer-secret"},
}
INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()
# (method, path, body): every route group, valid and invalid requests
HTTP_CORPUS: list[tuple[str, str, bytes | None]] = [
    ("GET", "/v2/health/live", None),
    ("GET", "/v2/health/ready", None),
    ("GET", "/v2/models/linear/ready", None),
    ("GET", "/v2", None),
    ("GET", "/v2/models/linear", None),
    ("GET", "/v2/models/linear/versions/1", None),
    ("GET", "/v2/models/nosuch", None),
    ("POST", "/v2/models/linear/infer", INFER_BODY),
    ("POST", "/v2/models/linear/versions/1/infer", INFER_BODY),
    ("POST", "/v2/models/linear/infer", b"{not json"),
    ("POST", "/v2/models/nosuch/infer", INFER_BODY),
    ("GET", "/v2/models/linear/infer", None),
    ("GET", "/v2/models/linear/config", None),
    ("GET", "/v2/models/nosuch/config", None),
    ("GET", "/v2/models/stats", None),
    ("GET", "/v2/models/linear/stats", None),
    ("POST", "/v2/repository/index", b"{}"),
    ("GET", "/v2/repository/index", None),
    ("POST", "/v2/repository/models/linear/unload", b"{}"),
    ("POST", "/v2/repository/models/linear/load", b"{}"),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/region/r/unregister", b""),
    ("GET", "/v2/cudasharedmemory/status", None),
    ("GET", "/v2/trace/setting", None),
    ("GET", "/v2/models/linear/trace/setting", None),
    ("GET", "/v2/logging", None),
    ("GET", "/v2/nothing/here", None),
]
# README's deliberate difference: a body that is not JSON is the client's fault (Triton: 500)
NOT_JSON = b"{not json"
Outcome = tuple[Any, ...]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    require_tritonserver()
    repo = tmp_path_factory.mktemp("triton-repo")
    write_linear_model(repo, "linear", max_batch_size=16)
    with running_tritonserver(repo, *FLAGS) as server:
        yield server


@pytest.fixture(scope="module")
def ferry_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("ferry-repo")
    model = mlp_model(4, 8, 3, input_name="x", output_name="y")
    write_model(repo, "linear", model, "max_batch_size: 16\n")
    return repo


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def ferry(ferry_repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with running_server(ferry_repository, "--grpc-transport", request.param, *FLAGS) as server:
        yield server


def http_answer(
    url: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> Outcome:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method=method)
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (response.status,)
    except urllib.error.HTTPError as error:
        payload = error.read()
        if error.code == 403:
            return (403, json.loads(payload))
        return (error.code,)


def http_answers(server: ServerProcess) -> dict[tuple[str, str, bytes | None, str], Outcome]:
    return {
        (method, path, body, variant): http_answer(server.http_url, method, path, body, headers)
        for method, path, body in HTTP_CORPUS
        for variant, headers in HTTP_HEADERS.items()
    }


def _stream_infer(client: grpcclient.InferenceServerClient, headers: dict[str, str]) -> Any:
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: results.put(error), headers=headers)
    try:
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        # the server may have ended the stream already: its error is on the callback
        with contextlib.suppress(InferenceServerException):
            client.async_stream_infer("linear", [x])
        error = results.get(timeout=30)
    finally:
        client.stop_stream()
    if error is not None:
        raise error
    return True


def _health_check(url: str, headers: dict[str, str]) -> Any:
    with grpc.insecure_channel(url) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=list(headers.items()), timeout=30
            )
        except grpc.RpcError as error:
            raise InferenceServerException(error.details(), status=str(error.code())) from None


def grpc_calls(
    client: grpcclient.InferenceServerClient, url: str
) -> dict[str, Callable[[dict[str, str]], Any]]:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    return {
        "ServerLive": lambda h: client.is_server_live(headers=h),
        "ServerReady": lambda h: client.is_server_ready(headers=h),
        "ModelReady": lambda h: client.is_model_ready("linear", headers=h),
        "Health/Check": lambda h: _health_check(url, h),
        "ServerMetadata": lambda h: client.get_server_metadata(headers=h),
        "ModelMetadata": lambda h: client.get_model_metadata("linear", headers=h),
        "ModelMetadata unknown": lambda h: client.get_model_metadata("nosuch", headers=h),
        "ModelInfer": lambda h: client.infer("linear", [x], headers=h),
        "ModelInfer unknown": lambda h: client.infer("nosuch", [x], headers=h),
        "ModelStreamInfer": lambda h: _stream_infer(client, h),
        "ModelConfig": lambda h: client.get_model_config("linear", headers=h),
        "ModelStatistics": lambda h: client.get_inference_statistics(headers=h),
        "RepositoryIndex": lambda h: client.get_model_repository_index(headers=h),
        "RepositoryModelUnload": lambda h: client.unload_model("linear", headers=h),
        "SystemSharedMemoryStatus": lambda h: client.get_system_shared_memory_status(headers=h),
        "SystemSharedMemoryUnregister": lambda h: client.unregister_system_shared_memory(
            "r", headers=h
        ),
        "CudaSharedMemoryStatus": lambda h: client.get_cuda_shared_memory_status(headers=h),
        "TraceSetting": lambda h: client.get_trace_settings(headers=h),
        "LogSettings": lambda h: client.get_log_settings(headers=h),
    }


def grpc_answers(server: ServerProcess) -> dict[tuple[str, str], Outcome]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: dict[tuple[str, str], Outcome] = {}
    try:
        for name, call in grpc_calls(client, server.grpc_url).items():
            for variant, headers in GRPC_HEADERS.items():
                try:
                    call(headers)
                    answers[(name, variant)] = ("OK",)
                except InferenceServerException as error:
                    answers[(name, variant)] = (error.status(), error.message())
    finally:
        client.close()
    return answers


def _refused(outcome: Outcome) -> bool:
    return outcome[0] == 403 or (
        outcome[0] == "StatusCode.UNAVAILABLE" and "is restricted" in str(outcome[1])
    )


@pytest.fixture(scope="module")
def triton_answers(triton: ServerProcess) -> dict[str, dict[Any, Outcome]]:
    return {"http": http_answers(triton), "grpc": grpc_answers(triton)}


def test_http_restricted_answers_match_triton(
    ferry: ServerProcess, triton_answers: dict[str, dict[Any, Outcome]]
) -> None:
    theirs = triton_answers["http"]
    ours = http_answers(ferry)
    refusals = [key for key, outcome in theirs.items() if _refused(outcome)]
    assert len(refusals) >= 50  # the corpus exercises every restricted group
    differences = {}
    for key, expected in theirs.items():
        got = ours[key]
        if _refused(expected) or _refused(got):
            same = got == expected
        elif key[2] == NOT_JSON and expected == (500,):
            same = got == (400,)
        else:
            same = got[0] == expected[0]
        if not same:
            differences[key] = {"triton": expected, "ferry": got}
    assert differences == {}


def test_grpc_restricted_answers_match_triton(
    ferry: ServerProcess, triton_answers: dict[str, dict[Any, Outcome]]
) -> None:
    theirs = triton_answers["grpc"]
    ours = grpc_answers(ferry)
    assert sum(_refused(outcome) for outcome in theirs.values()) >= 40
    differences = {}
    for key, expected in theirs.items():
        got = ours[key]
        refused = _refused(expected) or _refused(got)
        same = got == expected if refused else got[0] == expected[0]
        if not same:
            differences[key] = {"triton": expected, "ferry": got}
    assert differences == {}
