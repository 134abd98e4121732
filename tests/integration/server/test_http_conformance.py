"""tritonclient.http (the unmodified official client) against a real `ferry serve`:
the conformance checklist of reference/triton.md, Appendix A, HTTP part."""

from __future__ import annotations

import gzip
import json
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.onnx_models import run_reference
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


def rows(n: int, seed: int = 0, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "ferry"
    assert {
        "binary_tensor_data",
        "statistics",
        "model_repository",
        "model_configuration",
        "classification",
    } <= set(metadata["extensions"])


def test_model_metadata_has_batch_dim_and_kserve_datatypes(
    client: httpclient.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("mlp")
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("mlp", "1")["versions"] == ["1"]
    assert client.get_model_metadata("strings")["inputs"][0]["datatype"] == "BYTES"
    assert client.get_model_metadata("nobatch")["inputs"][0]["shape"] == [2, 16]


def test_model_config_is_bare_triton_json(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("mlp")
    assert "config" not in config
    assert config["max_batch_size"] == 4  # auto-completed like Triton's ORT backend
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [16]  # numbers, not strings
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    classifier = client.get_model_config("classifier", "1")
    assert classifier["dynamic_batching"]["max_queue_delay_microseconds"] == 2000


def test_model_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("binary_output", [True, False])
def test_infer_matches_onnxruntime(
    client: httpclient.InferenceServerClient,
    repository: Path,
    binary_input: bool,
    binary_output: bool,
) -> None:
    x = rows(3, seed=1)
    infer_input = httpclient.InferInput("input", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary_input)
    output = httpclient.InferRequestedOutput("output", binary_data=binary_output)
    result = client.infer("mlp", [infer_input], outputs=[output], request_id="req-7")
    expected = run_reference(repository / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "mlp" and response["model_version"] == "1"


def test_infer_without_outputs_returns_all(
    client: httpclient.InferenceServerClient, repository: Path
) -> None:
    a = rows(2, seed=2, width=3)
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    inputs = [
        httpclient.InferInput("a", [2, 3], "FP32"),
        httpclient.InferInput("b", [2, 3], "INT64"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("two_io", inputs)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("prod"), a * 2, rtol=1e-6)
    only_prod = client.infer("two_io", inputs, outputs=[httpclient.InferRequestedOutput("prod")])
    assert only_prod.as_numpy("sum") is None
    np.testing.assert_allclose(only_prod.as_numpy("prod"), a * 2, rtol=1e-6)


def test_bytes_tensors_round_trip(client: httpclient.InferenceServerClient) -> None:
    text = np.array([[b"hello", b"two words"], ["ünïcode".encode(), b""]], dtype=np.object_)
    for binary in (True, False):
        data = text if binary else text[:, :1].repeat(2, axis=1)
        infer_input = httpclient.InferInput("text", list(data.shape), "BYTES")
        infer_input.set_data_from_numpy(data, binary_data=binary)
        result = client.infer("strings", [infer_input])
        assert result.as_numpy("echo").tolist() == data.tolist()
    invalid_utf8 = httpclient.InferInput("text", [1, 2], "BYTES")
    invalid_utf8.set_data_from_numpy(np.array([[b"\xff", b"ok"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="UTF-8") as error:
        client.infer("strings", [invalid_utf8])
    assert error.value.status() == "400"


def test_classification_extension(
    client: httpclient.InferenceServerClient, repository: Path
) -> None:
    x = rows(2, seed=4)
    infer_input = httpclient.InferInput("input", [2, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(
        "classifier",
        [infer_input],
        outputs=[httpclient.InferRequestedOutput("output", class_count=2)],
    )
    classes = result.as_numpy("output")
    assert classes.shape == (2, 2)
    logits = run_reference(repository / "classifier" / "1" / "model.onnx", {"input": x})["output"]
    labels = ["cat", "dog", "bird", "fish"]
    for row, entries in zip(logits, classes, strict=True):
        top = np.argsort(-row)[:2]
        for index, entry in zip(top, entries, strict=True):
            value, got_index, label = entry.decode().split(":")
            assert int(got_index) == index and label == labels[index]
            assert float(value) == pytest.approx(row[index], abs=1e-5)


def test_non_batching_model(client: httpclient.InferenceServerClient, repository: Path) -> None:
    x = rows(2, seed=6)
    infer_input = httpclient.InferInput("input", [2, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    expected = run_reference(repository / "nobatch" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(
        client.infer("nobatch", [infer_input]).as_numpy("output"), expected, rtol=1e-5
    )


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression_both_ways(
    client: httpclient.InferenceServerClient, repository: Path, algorithm: str
) -> None:
    x = rows(4, seed=7)
    infer_input = httpclient.InferInput("input", [4, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(
        "mlp",
        [infer_input],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    expected = run_reference(repository / "mlp" / "1" / "model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5)


def test_response_compressed_only_when_asked(server: ServerProcess) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    ).encode()
    for encoding, decode in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/models/mlp/infer",
            data=body,
            headers={"Accept-Encoding": f"br, {encoding};q=0.9"},
        )
        with urllib.request.urlopen(request) as response:
            assert response.headers["Content-Encoding"] == encoding
            assert json.loads(decode(response.read()))["model_name"] == "mlp"
    metadata = urllib.request.Request(
        f"http://{server.http_url}/v2/models/mlp", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(metadata) as response:  # never compress non-infer responses
        assert response.headers.get("Content-Encoding") is None
        assert json.loads(response.read())["name"] == "mlp"


def test_statistics(client: httpclient.InferenceServerClient) -> None:
    x = rows(2, seed=8)
    infer_input = httpclient.InferInput("input", [2, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    before = client.get_inference_statistics("two_io")["model_stats"][0]
    a = httpclient.InferInput("a", [2, 3], "FP32")
    a.set_data_from_numpy(x[:, :3].copy())
    b = httpclient.InferInput("b", [2, 3], "INT64")
    b.set_data_from_numpy(np.ones((2, 3), dtype=np.int64))
    client.infer("two_io", [a, b])
    after = client.get_inference_statistics("two_io", "1")["model_stats"][0]
    assert after["name"] == "two_io" and after["version"] == "1"
    assert (
        after["inference_stats"]["success"]["count"]
        == before["inference_stats"]["success"]["count"] + 1
    )
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] >= before["execution_count"] + 1
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"mlp", "two_io", "classifier"}


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert isinstance(index, list)
    states = {(m["name"], m.get("version")): m.get("state") for m in index}
    assert states[("mlp", "1")] == "READY"
    assert states[("strings", "1")] == "READY"


def test_load_and_unload_refused_outside_explicit_mode(
    client: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.load_model("mlp")
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.unload_model("mlp")


def test_errors_use_triton_status_and_error_json(
    client: httpclient.InferenceServerClient, server: ServerProcess
) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no_such_model")
    assert unknown.value.status() == "404"
    assert "unknown model" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.get_model_metadata("mlp", "9")
    assert version.value.status() == "404"
    for path, method, status in (
        ("/v2/nothing/here", "GET", 404),
        ("/v2/health/live", "POST", 405),
        ("/v2/models/mlp/infer", "GET", 405),
    ):
        request = urllib.request.Request(f"http://{server.http_url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request)
        assert error.value.code == status
        assert "error" in json.loads(error.value.read())
