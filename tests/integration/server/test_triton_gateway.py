"""ferry in front of a real upstream Triton (the triton_gateway runtime), checked with tritonclient.

One tritonserver (python-backend models) and one `ferry serve` with gateway models pointing at
it, plus gateway models that must fail to load (upstream down, model missing, batch too big, no
URL) and an ONNX model that must keep serving beside them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, free_port, running_server
from tests.support.triton_server import (
    TritonServer,
    linear_parameters,
    require_tritonserver,
    running_tritonserver,
    write_gateway_model,
    write_linear_model,
    write_upper_model,
)

pytestmark = pytest.mark.slow

# ferry batches; two instances, each with its own channel to the upstream.
LINEAR_EXTRA = """dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [{ kind: KIND_CPU count: 2 }]
"""
LOADING_MODELS = ("linear", "words", "mlp")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    require_tritonserver()
    repo = tmp_path_factory.mktemp("upstream")
    write_linear_model(repo, "linear", max_batch_size=16)
    write_upper_model(repo, "upper", max_batch_size=8)
    with running_tritonserver(repo) as server:
        yield server


@dataclass
class Gateway:
    upstream: TritonServer
    ferry: ServerProcess

    def http(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.ferry.http_url)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.ferry.grpc_url)


def wait_ready(
    client: httpclient.InferenceServerClient, names: tuple[str, ...], timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.is_model_ready(name) for name in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"models {names} not ready: {client.get_model_repository_index()}")


@pytest.fixture(scope="module")
def gateway(upstream: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    repo = tmp_path_factory.mktemp("gateway")
    url = upstream.grpc_url
    write_gateway_model(repo, "linear", url, LINEAR_EXTRA)  # everything else from upstream
    write_gateway_model(
        repo, "words", url, triton_model="upper", triton_model_version="1", triton_timeout_s="30"
    )
    write_model(repo, "mlp", mlp_model())
    write_gateway_model(repo, "down", f"127.0.0.1:{free_port()}")  # nothing listens there
    write_gateway_model(repo, "missing", url, triton_model="no_such_model")
    write_gateway_model(repo, "too_big", url, "max_batch_size: 64\n", triton_model="linear")
    write_gateway_model(repo, "no_url", "")
    with running_server(repo, ready=False) as ferry:
        gateway = Gateway(upstream, ferry)
        wait_ready(gateway.http(), LOADING_MODELS)
        yield gateway


def linear_reference(x: np.ndarray) -> np.ndarray:
    weights, bias = linear_parameters()
    return np.asarray(x @ weights + bias, dtype=np.float32)


def http_linear(
    client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool = True
) -> np.ndarray:
    infer_input = httpclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    output = httpclient.InferRequestedOutput("y", binary_data=binary)
    result: np.ndarray = client.infer("linear", [infer_input], outputs=[output]).as_numpy("y")
    return result


def grpc_linear(client: grpcclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    infer_input = grpcclient.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result: np.ndarray = client.infer("linear", [infer_input]).as_numpy("y")
    return result


def execution_counts(stats: dict[str, Any]) -> tuple[int, int]:
    """(inference_count, execution_count) of a model's only version, from HTTP /stats."""
    model = stats["model_stats"][0]
    return int(model["inference_count"]), int(model["execution_count"])


def test_metadata_and_config_are_completed_from_upstream(gateway: Gateway) -> None:
    http, grpc = gateway.http(), gateway.grpc()
    metadata = http.get_model_metadata("linear")
    assert metadata["platform"] == "triton_gateway"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    config = http.get_model_config("linear")
    assert config["max_batch_size"] == 16  # upstream's
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000  # ours
    assert sum(group["count"] for group in config["instance_group"]) == 2
    words = grpc.get_model_metadata("words", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in words["outputs"]] == [
        ("upper", "BYTES", ["-1", "1"]),
        ("length", "INT32", ["-1", "1"]),
    ]
    assert grpc.get_model_config("words").config.max_batch_size == 8


def test_inference_matches_numpy_over_http_and_grpc(gateway: Gateway) -> None:
    rng = np.random.default_rng(1)
    http, grpc = gateway.http(), gateway.grpc()
    for rows in (1, 3, 16):
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        np.testing.assert_allclose(http_linear(http, x), linear_reference(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            http_linear(http, x, binary=False), linear_reference(x), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(grpc_linear(grpc, x), linear_reference(x), rtol=1e-5, atol=1e-5)


def test_bytes_tensors_go_through(gateway: Gateway) -> None:
    text = np.array([[b"ferry"], [b"triton \xc3\xa9"], [b""]], dtype=np.object_)
    infer_input = grpcclient.InferInput("text", [3, 1], "BYTES")
    infer_input.set_data_from_numpy(text)
    result = gateway.grpc().infer("words", [infer_input])
    assert result.as_numpy("upper").tolist() == [[b"FERRY"], [b"TRITON \xc3\xa9"], [b""]]
    assert result.as_numpy("length").tolist() == [[5], [9], [0]]
    http_input = httpclient.InferInput("text", [1, 1], "BYTES")
    http_input.set_data_from_numpy(np.array([[b"abc"]], dtype=np.object_))
    http_result = gateway.http().infer("words", [http_input])
    assert http_result.as_numpy("upper").tolist() == [[b"ABC"]]


def test_concurrent_requests_are_batched_by_ferry(gateway: Gateway) -> None:
    http = gateway.http()
    upstream = httpclient.InferenceServerClient(gateway.upstream.http_url)
    before = execution_counts(http.get_inference_statistics("linear"))
    upstream_before = execution_counts(upstream.get_inference_statistics("linear"))
    threads, per_thread = 32, 4
    barrier = threading.Barrier(threads)
    local = threading.local()

    def work(index: int) -> list[bool]:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(gateway.ferry.grpc_url)
        barrier.wait()
        correct = []
        for step in range(per_thread):
            rows = 1 + (index + step) % 2
            x = np.random.default_rng(index * 100 + step).standard_normal((rows, 4))
            x = x.astype(np.float32)
            y = grpc_linear(local.client, x)
            correct.append(
                y.shape == (rows, 3)
                and bool(np.allclose(y, linear_reference(x), rtol=1e-5, atol=1e-5))
            )
        return correct

    with ThreadPoolExecutor(threads) as pool:
        results = [ok for chunk in pool.map(work, range(threads)) for ok in chunk]
    assert len(results) == threads * per_thread and all(results)
    after = execution_counts(http.get_inference_statistics("linear"))
    requests = int(
        http.get_inference_statistics("linear")["model_stats"][0]["inference_stats"]["success"][
            "count"
        ]
    )
    assert requests >= threads * per_thread
    inferences, executions = after[0] - before[0], after[1] - before[1]
    rows = sum(1 + (i + s) % 2 for i in range(threads) for s in range(per_thread))
    assert inferences == rows
    assert executions < threads * per_thread, (executions, threads * per_thread)
    # the upstream (no batcher of its own) ran exactly the batches ferry formed
    upstream_after = execution_counts(upstream.get_inference_statistics("linear"))
    assert upstream_after[1] - upstream_before[1] == executions
    assert upstream_after[0] - upstream_before[0] == rows


def test_failed_gateways_explain_why_and_others_keep_serving(gateway: Gateway) -> None:
    http = gateway.http()
    index = {row["name"]: row for row in http.get_model_repository_index()}
    for name in LOADING_MODELS:
        assert index[name]["state"] == "READY", index[name]
    expected = {
        "down": "unreachable",
        "missing": "is not ready",
        "too_big": "exceeds the max_batch_size 16",
        "no_url": "triton_url",
    }
    for name, words in expected.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert words in index[name]["reason"], index[name]
    assert "no_such_model" in index["missing"]["reason"]
    down_input = httpclient.InferInput("x", [1, 4], "FP32")
    down_input.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException) as error:
        http.infer("down", [down_input])
    assert error.value.status() == "503"
    x = np.zeros((2, 16), dtype=np.float32)
    mlp_input = httpclient.InferInput("input", [2, 16], "FP32")
    mlp_input.set_data_from_numpy(x)
    assert http.infer("mlp", [mlp_input]).as_numpy("output").shape == (2, 4)
    assert http.is_server_live()


def test_upstream_request_error_is_a_clean_client_error(gateway: Gateway) -> None:
    http, grpc = gateway.http(), gateway.grpc()
    bad = np.full((1, 4), np.nan, dtype=np.float32)
    with pytest.raises(InferenceServerException) as http_error:
        http_linear(http, bad)
    assert http_error.value.status() == "400"
    assert "NaN" in str(http_error.value.message())
    with pytest.raises(InferenceServerException) as grpc_error:
        grpc_linear(grpc, bad)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert http.is_server_live() and http.is_model_ready("linear")
    good = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(http_linear(http, good), linear_reference(good), rtol=1e-5)


def test_upstream_going_away_is_unavailable_and_ferry_stays_healthy(tmp_path: Path) -> None:
    require_tritonserver()
    upstream_repo, ferry_repo = tmp_path / "upstream", tmp_path / "ferry"
    write_linear_model(upstream_repo)
    write_model(ferry_repo, "mlp", mlp_model())
    with running_tritonserver(upstream_repo) as upstream:
        write_gateway_model(ferry_repo, "linear", upstream.grpc_url, triton_timeout_s="10")
        with running_server(ferry_repo) as ferry:
            http = httpclient.InferenceServerClient(ferry.http_url)
            x = np.ones((1, 4), dtype=np.float32)
            np.testing.assert_allclose(http_linear(http, x), linear_reference(x), rtol=1e-5)
            upstream.stop()
            with pytest.raises(InferenceServerException) as error:
                http_linear(http, x)
            assert error.value.status() == "503"
            assert "UNAVAILABLE" in str(error.value.message())
            with pytest.raises(InferenceServerException) as grpc_error:
                grpc_linear(grpcclient.InferenceServerClient(ferry.grpc_url), x)
            assert grpc_error.value.status() == "StatusCode.UNAVAILABLE"
            assert http.is_server_live()
            mlp_input = httpclient.InferInput("input", [1, 16], "FP32")
            mlp_input.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
            assert http.infer("mlp", [mlp_input]).as_numpy("output").shape == (1, 4)
