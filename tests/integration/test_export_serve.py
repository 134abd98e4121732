"""Exported models load in `ferry serve` and answer over tritonclient like PyTorch does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from exporters.pipeline import ExportOptions, run_export
from tests.support import torch_models as tm
from tests.support.server_process import ServerProcess, running_server

M = "tests.support.torch_models"
# name -> (model class, inputs as (name, dtype, dims), output names)
MODELS: dict[str, tuple[str, list[tuple[str, type, tuple[int, ...]]], tuple[str, ...]]] = {
    "mlp": ("TinyMLP", [("x", np.float32, (8,))], ("logits",)),
    "two_io": (
        "TwoInTwoOut",
        [("features", np.float32, (6,)), ("ids", np.int64, (3,))],
        ("scores", "total"),
    ),
    "cnn": ("ConvBNDropout", [("image", np.float32, (3, 16, 16))], ("probabilities",)),
    "gru": ("GRUClassifier", [("sequence", np.float32, (12, 5))], ("logits",)),
    "encoder": ("TinyEncoder", [("tokens", np.int64, (16,))], ("logits",)),
}
DATATYPE = {np.float32: "FP32", np.int64: "INT64"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for name, (cls, inputs, outputs) in MODELS.items():
        specs = tuple(f"{n}:{DATATYPE[d]}:{','.join(map(str, dims))}" for n, d, dims in inputs)
        run_export(
            ExportOptions(
                source=f"{M}:{cls}",
                name=name,
                repository=repo,
                inputs=specs,
                outputs=outputs,
                max_batch_size=64,
            )
        )
    with running_server(repo) as process:
        yield process


def batch_of(name: str, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    arrays = {}
    for input_name, dtype, dims in MODELS[name][1]:
        arrays[input_name] = (
            rng.standard_normal((size, *dims))
            if dtype is np.float32
            else rng.integers(0, 10, (size, *dims))
        ).astype(dtype)
    return arrays


def torch_outputs(name: str, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = getattr(tm, MODELS[name][0])().eval()
    with torch.inference_mode():
        result = model(*(torch.from_numpy(a) for a in arrays.values()))
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [1, 37])
def test_http_binary_matches_torch(server: ServerProcess, name: str, size: int) -> None:
    arrays = batch_of(name, size)
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for input_name, array in arrays.items():
        tensor = httpclient.InferInput(input_name, list(array.shape), DATATYPE[array.dtype.type])
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    for output, want in zip(MODELS[name][2], torch_outputs(name, arrays), strict=True):
        got = result.as_numpy(output)
        assert got.shape == (size, *want.shape[1:])
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["two_io", "encoder"])
def test_grpc_matches_torch_at_batch_37(server: ServerProcess, name: str) -> None:
    arrays = batch_of(name, 37)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for input_name, array in arrays.items():
        tensor = grpcclient.InferInput(input_name, list(array.shape), DATATYPE[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    for output, want in zip(MODELS[name][2], torch_outputs(name, arrays), strict=True):
        np.testing.assert_allclose(result.as_numpy(output), want, rtol=1e-3, atol=1e-4)


def test_served_config_is_the_exported_one(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    config = client.get_model_config("two_io")
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 64
    assert [i["name"] for i in config["input"]] == ["features", "ids"]
    assert [o["name"] for o in config["output"]] == ["scores", "total"]
    assert config["input"][1]["data_type"] == "TYPE_INT64"
    metadata = client.get_model_metadata("cnn")
    assert metadata["inputs"][0]["shape"] == [-1, 3, 16, 16]


def test_json_request_on_the_mlp(server: ServerProcess) -> None:
    arrays = batch_of("mlp", 3)
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("x", [3, 8], "FP32")
    tensor.set_data_from_numpy(arrays["x"], binary_data=False)
    result = client.infer(
        "mlp", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)]
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"), torch_outputs("mlp", arrays)[0], rtol=1e-3, atol=1e-4
    )


def test_example_repository_builder_uses_export(tmp_path: Path) -> None:
    """scripts/build_example_repository.py on the smallest example (artifacts trained once)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "scripts/build_example_repository.py",
            str(tmp_path / "repo"),
            "--only",
            "breast_cancer",
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert "dynamo exporter" in result.stdout
    folder = tmp_path / "repo" / "breast_cancer" / "1"
    assert (folder / "model.onnx").is_file() and (folder / "export_report.json").is_file()
    assert (tmp_path / "artifacts" / "breast_cancer" / "val.npz").is_file()
