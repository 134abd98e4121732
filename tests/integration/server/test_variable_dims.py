"""Variable dimensions end to end: a GRU served at lengths 3, 17 and 64 in one concurrent load, a
CNN at several image sizes, padding across lengths, and every path a -1 dim takes (JSON, binary,
gRPC, raw binary, shared memory, classification), with answers checked against PyTorch."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from tests.support.concurrent_clients import (
    Clients,
    metric_total,
    model_statistics,
    run_concurrently,
)
from tests.support.onnx_models import identity_model, write_model
from tests.support.server_process import ServerProcess, running_server
from tests.support.shared_memory import client_region, shm
from tests.support.torch_export import export_onnx
from tests.support.torch_models import (
    ConvBNDropout,
    GRUClassifier,
    LSTMTagger,
    MaskedGRUClassifier,
)
from tests.support.triton_server import missing_reason, running_tritonserver

BATCHING = """
dynamic_batching { max_queue_delay_microseconds: 5000 }
instance_group [{ kind: KIND_CPU count: 1 }]
"""
GRU_CONFIG = (
    """
max_batch_size: 16
input [{ name: "sequence" data_type: TYPE_FP32 dims: [-1, 5] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [3] }]
"""
    + BATCHING
)
PADDED_GRU_CONFIG = (
    """
max_batch_size: 16
input [{ name: "sequence" data_type: TYPE_FP32 dims: [-1, 5] },
       { name: "length" data_type: TYPE_INT64 dims: [1] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [3] }]
parameters { key: "ferry.pad_variable_dims" value: { string_value: "sequence:0" } }
"""
    + BATCHING
)
CNN_CONFIG = (
    """
max_batch_size: 8
input [{ name: "image" data_type: TYPE_FP32 dims: [3, -1, -1] }]
output [{ name: "probabilities" data_type: TYPE_FP32 dims: [5] }]
"""
    + BATCHING
)
TAGGER_CONFIG = """
max_batch_size: 8
input [{ name: "sequence" data_type: TYPE_FP32 dims: [-1, 4] }]
output [{ name: "tags" data_type: TYPE_FP32 dims: [-1, 2] }]
"""
SEQUENCE_AXES = {0: "batch", 1: "seq_len"}


@pytest.fixture(scope="module")
def variable_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("variable")
    gru = export_onnx(
        GRUClassifier(),
        {"sequence": torch.randn(2, 7, 5)},
        ["logits"],
        {"sequence": SEQUENCE_AXES, "logits": {0: "batch"}},
    )
    write_model(repo, "gru", gru, GRU_CONFIG)
    masked = export_onnx(
        MaskedGRUClassifier(),
        {"sequence": torch.randn(2, 7, 5), "length": torch.tensor([[7], [3]])},
        ["logits"],
        {"sequence": SEQUENCE_AXES, "length": {0: "batch"}, "logits": {0: "batch"}},
    )
    write_model(repo, "gru_padded", masked, PADDED_GRU_CONFIG)
    cnn = export_onnx(
        ConvBNDropout(),
        {"image": torch.randn(2, 3, 16, 16)},
        ["probabilities"],
        {"image": {0: "batch", 2: "height", 3: "width"}, "probabilities": {0: "batch"}},
    )
    write_model(repo, "cnn", cnn, CNN_CONFIG)
    tagger = export_onnx(
        LSTMTagger(),
        {"sequence": torch.randn(2, 10, 4)},
        ["tags"],
        {"sequence": SEQUENCE_AXES, "tags": SEQUENCE_AXES},
    )
    write_model(repo, "tagger", tagger, TAGGER_CONFIG)
    return repo


@pytest.fixture(scope="module")
def server(variable_repository: Path) -> Iterator[ServerProcess]:
    with running_server(variable_repository, "--allow-client-shm") as process:
        yield process


def _torch(module: torch.nn.Module, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        result: np.ndarray = module.eval()(*(torch.from_numpy(x) for x in inputs)).numpy()
    return result


def _infer(clients: Clients, protocol: str, model: str, inputs: dict[str, np.ndarray], output: str):
    """One request over HTTP binary, HTTP JSON or gRPC; the named output."""
    module = grpcclient if protocol == "grpc" else httpclient
    wire = []
    for name, array in inputs.items():
        tensor = module.InferInput(
            name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32"
        )
        if protocol == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=protocol == "binary")
        wire.append(tensor)
    client = clients.grpc if protocol == "grpc" else clients.http
    return client.infer(model, wire).as_numpy(output)


PROTOCOLS = ("binary", "json", "grpc")


def test_gru_at_lengths_3_17_64_in_one_concurrent_load(server: ServerProcess) -> None:
    """Requests batch only with requests of their own length (Triton's rule): every answer equals
    PyTorch's, and no execution failed (a mixed-length batch could not even be concatenated)."""
    rng = np.random.default_rng(0)
    jobs = [
        (length, rng.standard_normal((int(rng.integers(1, 3)), length, 5)).astype(np.float32))
        for length in (3, 17, 64)
        for _ in range(40)
    ]
    jobs = [jobs[i] for i in rng.permutation(len(jobs))]
    results = run_concurrently(
        server,
        jobs,
        lambda clients, index, job: _infer(
            clients, PROTOCOLS[index % 3], "gru", {"sequence": job[1]}, "logits"
        ),
        workers=48,
    )
    gru = GRUClassifier()
    for (_, sequence), logits in zip(jobs, results, strict=True):
        np.testing.assert_allclose(logits, _torch(gru, sequence), rtol=1e-4, atol=1e-5)
    stats = model_statistics(server, "gru")
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert stats["execution_count"] < len(jobs)  # batches formed
    assert metric_total(server, "nv_inference_exec_count", "gru") == stats["execution_count"]


def test_padding_batches_requests_of_different_lengths(server: ServerProcess) -> None:
    """`ferry.pad_variable_dims`: 64 requests of 64 different lengths in fewer than 64
    executions, each answer equal to PyTorch's on the request's own, unpadded sequence."""
    rng = np.random.default_rng(1)
    lengths = rng.permutation(np.arange(1, 65))
    jobs = [rng.standard_normal((1, int(n), 5)).astype(np.float32) for n in lengths]
    results = run_concurrently(
        server,
        jobs,
        lambda clients, index, sequence: _infer(
            clients,
            PROTOCOLS[index % 3],
            "gru_padded",
            {"sequence": sequence, "length": np.array([[sequence.shape[1]]], dtype=np.int64)},
            "logits",
        ),
    )
    gru = MaskedGRUClassifier()
    for sequence, logits in zip(jobs, results, strict=True):
        own = _torch(gru, sequence, np.array([[sequence.shape[1]]], dtype=np.int64))
        np.testing.assert_allclose(logits, own, rtol=1e-4, atol=1e-5)
    stats = model_statistics(server, "gru_padded")
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert stats["execution_count"] < len(jobs)
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"])


def test_cnn_at_several_image_sizes(server: ServerProcess) -> None:
    rng = np.random.default_rng(2)
    jobs = [
        rng.standard_normal((int(rng.integers(1, 3)), 3, h, w)).astype(np.float32)
        for h, w in ((16, 16), (20, 12), (9, 31), (64, 48))
        for _ in range(6)
    ]
    results = run_concurrently(
        server,
        jobs,
        lambda clients, index, image: _infer(
            clients, PROTOCOLS[index % 3], "cnn", {"image": image}, "probabilities"
        ),
        workers=16,
    )
    cnn = ConvBNDropout()
    for image, probabilities in zip(jobs, results, strict=True):
        np.testing.assert_allclose(probabilities, _torch(cnn, image), rtol=1e-4, atol=1e-5)


def test_variable_output_through_shared_memory_and_classification(server: ServerProcess) -> None:
    """The tagger's output follows the input's length: written to a shared memory region, and
    ranked by the classification extension (over the flattened per-step scores, as Triton)."""
    tagger = LSTMTagger()
    client = httpclient.InferenceServerClient(server.http_url)
    for length in (2, 11):
        sequence = np.random.default_rng(length).standard_normal((1, length, 4)).astype(np.float32)
        expected = _torch(tagger, sequence)
        with client_region(sequence.nbytes) as source, client_region(expected.nbytes) as target:
            shm.set_shared_memory_region(source.handle, [sequence])
            client.register_system_shared_memory("in", source.key, source.byte_size)
            client.register_system_shared_memory("out", target.key, target.byte_size)
            try:
                tensor = httpclient.InferInput("sequence", list(sequence.shape), "FP32")
                tensor.set_shared_memory("in", sequence.nbytes)
                tags = httpclient.InferRequestedOutput("tags")
                tags.set_shared_memory("out", expected.nbytes)
                result = client.infer("tagger", [tensor], outputs=[tags])
                shape = result.get_output("tags")["shape"]
                assert shape == [1, length, 2]
                got = shm.get_contents_as_numpy(target.handle, np.float32, shape)
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            finally:
                client.unregister_system_shared_memory()
        tensor = httpclient.InferInput("sequence", list(sequence.shape), "FP32")
        tensor.set_data_from_numpy(sequence)
        top = httpclient.InferRequestedOutput("tags", class_count=2)
        ranked = client.infer("tagger", [tensor], outputs=[top]).as_numpy("tags")
        flat = expected.reshape(1, -1)
        assert [int(item.decode().split(":")[1]) for item in ranked[0]] == list(
            np.argsort(-flat[0], kind="stable")[:2]
        )
    client.close()


# --- raw binary requests (Inference-Header-Content-Length: 0): Triton deduces one -1 dim -----

RAW_MODELS = {  # name: (config dims, max_batch_size, config type, ONNX type)
    "onevar": ("[-1, 4]", 8, "TYPE_FP32", TensorProto.FLOAT),
    "twovar": ("[-1, -1]", 8, "TYPE_FP32", TensorProto.FLOAT),
    "fixed": ("[4]", 8, "TYPE_FP32", TensorProto.FLOAT),
    "nobatchvar": ("[-1, 4]", 0, "TYPE_FP32", TensorProto.FLOAT),
    "bytes1": ("[1]", 8, "TYPE_STRING", TensorProto.STRING),
    "bytesvar": ("[-1]", 8, "TYPE_STRING", TensorProto.STRING),
}
RAW_BODIES = [
    ("onevar", np.arange(8, dtype=np.float32).tobytes()),
    ("onevar", np.arange(3, dtype=np.float32).tobytes()),
    ("twovar", np.arange(8, dtype=np.float32).tobytes()),
    ("fixed", np.arange(4, dtype=np.float32).tobytes()),
    ("fixed", np.arange(8, dtype=np.float32).tobytes()),
    ("nobatchvar", np.arange(8, dtype=np.float32).tobytes()),
    ("bytes1", b"\x03\x00\x00\x00abc"),
    ("bytesvar", b"\x03\x00\x00\x00abc"),
]
IDENTITY_PY = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y",
                pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]) for r in requests]
"""


def _raw_repositories(root: Path) -> tuple[Path, Path]:
    """The same identity models for ferry (ONNX) and for Triton (python backend)."""
    ferry_repo, triton_repo = root / "ferry", root / "triton"
    for name, (dims, max_batch_size, config_type, onnx_type) in RAW_MODELS.items():
        io = (
            f'input [{{ name: "x" data_type: {config_type} dims: {dims} }}]\n'
            f'output [{{ name: "y" data_type: {config_type} dims: {dims} }}]\n'
        )
        full = ([-1] if max_batch_size else []) + json.loads(dims)
        write_model(
            ferry_repo,
            name,
            identity_model(full, onnx_type),
            f"max_batch_size: {max_batch_size}\n{io}",
        )
        (triton_repo / name / "1").mkdir(parents=True)
        (triton_repo / name / "1" / "model.py").write_text(IDENTITY_PY)
        (triton_repo / name / "config.pbtxt").write_text(
            f'backend: "python"\nmax_batch_size: {max_batch_size}\n{io}'
            "instance_group [{ kind: KIND_CPU count: 1 }]\n"
        )
    return ferry_repo, triton_repo


def _raw(url: str, model: str, body: bytes) -> tuple[int, object]:
    """POST a raw binary request; (status, output shapes) or (status, error message)."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=body,
        headers={"Inference-Header-Content-Length": "0"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            length = int(response.headers["Inference-Header-Content-Length"])
            header = json.loads(response.read()[:length])
            return response.status, [o["shape"] for o in header["outputs"]]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_raw_binary_requests_deduce_one_variable_dim_as_triton_does(tmp_path: Path) -> None:
    ferry_repo, triton_repo = _raw_repositories(tmp_path)
    with running_server(ferry_repo) as ferry, running_tritonserver(triton_repo) as triton:
        for model, body in RAW_BODIES:
            ours, theirs = _raw(ferry.http_url, model, body), _raw(triton.http_url, model, body)
            assert ours[0] == theirs[0], (model, len(body), ours, theirs)
            if ours[0] == 200:
                assert ours[1] == theirs[1], (model, len(body), ours, theirs)
            elif "deduced" in str(theirs[1]) or "BYTE" in str(theirs[1]):
                assert str(ours[1]) in str(theirs[1]), (ours, theirs)  # Triton's own words
