"""tritonclient.grpc (unmodified) against a real `ferry serve`: Appendix A, gRPC part."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import run_reference
from tests.support.server_process import ServerProcess, running_server


@pytest.fixture(scope="module", params=["ferry", "grpcio"])
def server(
    request: pytest.FixtureRequest, server: ServerProcess, repository: Path
) -> Iterator[ServerProcess]:
    """Every test here runs on both gRPC transports (`--grpc-transport`)."""
    if request.param == "ferry":
        yield server  # the default: the session's shared server
        return
    with running_server(repository, "--grpc-transport", request.param) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


def mlp_input(n: int, seed: int = 0) -> tuple[np.ndarray, grpcclient.InferInput]:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    infer_input = grpcclient.InferInput("input", [n, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    return x, infer_input


def test_health_metadata_config(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and not client.is_model_ready("mlp", "3")
    assert "statistics" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("mlp", as_json=True)
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 4
    assert config["input"][0]["data_type"] == "TYPE_FP32"


def test_infer_raw_contents(client: grpcclient.InferenceServerClient, repository: Path) -> None:
    x, infer_input = mlp_input(3, seed=11)
    result = client.infer(
        "mlp", [infer_input], request_id="g1", outputs=[grpcclient.InferRequestedOutput("output")]
    )
    expected = run_reference(repository / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "g1" and response.model_version == "1"


def test_two_inputs_two_outputs_and_bytes(client: grpcclient.InferenceServerClient) -> None:
    a = np.ones((2, 3), dtype=np.float32)
    b = np.full((2, 3), 4, dtype=np.int64)
    inputs = [
        grpcclient.InferInput("a", [2, 3], "FP32"),
        grpcclient.InferInput("b", [2, 3], "INT64"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("two_io", inputs)
    np.testing.assert_allclose(result.as_numpy("sum"), np.full((2, 3), 5.0))
    np.testing.assert_allclose(result.as_numpy("prod"), np.full((2, 3), 2.0))
    text = np.array([[b"a", b"bc"]], dtype=np.object_)
    text_input = grpcclient.InferInput("text", [1, 2], "BYTES")
    text_input.set_data_from_numpy(text)
    assert client.infer("strings", [text_input]).as_numpy("echo").tolist() == text.tolist()


def test_classification(client: grpcclient.InferenceServerClient) -> None:
    _, infer_input = mlp_input(1, seed=3)
    result = client.infer(
        "classifier",
        [infer_input],
        outputs=[grpcclient.InferRequestedOutput("output", class_count=3)],
    )
    classes = result.as_numpy("output")
    assert classes.shape == (1, 3)
    assert all(len(entry.decode().split(":")) == 3 for entry in classes[0])


def test_statistics_and_index(client: grpcclient.InferenceServerClient) -> None:
    _, infer_input = mlp_input(2)
    client.infer("mlp", [infer_input])
    stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    assert stats["name"] == "mlp" and int(stats["inference_count"]) >= 2
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in [
        {k: m.get(k) for k in ("name", "version", "state")} for m in index
    ]


def test_status_codes(client: grpcclient.InferenceServerClient) -> None:
    _, infer_input = mlp_input(1)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [infer_input])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("input", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
    with pytest.raises(InferenceServerException) as shape:
        client.infer("mlp", [bad])
    assert shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unexpected shape" in shape.value.message()
    _, infer_input = mlp_input(5)
    with pytest.raises(InferenceServerException, match="batch-size must be <= 4"):
        client.infer("mlp", [infer_input])
    with pytest.raises(InferenceServerException) as load:
        client.load_model("mlp")
    assert load.value.status() == "StatusCode.UNAVAILABLE"


def test_stream_infer(client: grpcclient.InferenceServerClient, repository: Path) -> None:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = {}
        for i in range(6):
            x, infer_input = mlp_input(1, seed=100 + i)
            sent[str(i)] = x
            client.async_stream_infer("mlp", [infer_input], request_id=str(i))
        bad = grpcclient.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        received, errors = {}, []
        for _ in range(7):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                received[result.get_response().id] = result.as_numpy("output")
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "unexpected shape" in str(errors[0])
    model = repository / "mlp" / "1" / "model.onnx"
    for request_id, x in sent.items():
        np.testing.assert_allclose(
            received[request_id], run_reference(model, {"input": x})["output"], rtol=1e-5
        )


def test_standard_health_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING
