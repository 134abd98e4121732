"""Variable dims end to end: a GRU text classifier with any sequence length and a CNN with any
image size, exported with `ferry export`, served by `ferry serve`, checked against PyTorch
through the unmodified tritonclient in one concurrent load of mixed sizes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server.repository_format import read_config
from tests.support import torch_models as tm
from tests.support.export_cli import export_ok
from tests.support.server_process import ServerProcess, running_server

M = "tests.support.torch_models"
VOCAB = 300
LENGTHS = (3, 17, 64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("repo")
    outputs = {
        "gru": export_ok(
            repo,
            f"{M}:GRUTextClassifier",
            "--init-args",
            json.dumps({"vocab_size": VOCAB, "hidden": 24}),
            "--input",
            "tokens:INT64:-1",
            "--dynamic-dim",
            "tokens:1=seq_len",
            "--dim-sizes",
            "seq_len=17,3,64",
            "--output",
            "logits",
            name="gru",
        ),
        "cnn": export_ok(
            repo,
            f"{M}:ConvBNDropout",
            "--input",
            "image:FP32:3,height,width",
            "--dim-sizes",
            "height=16,24",
            "--dim-sizes",
            "width=20,12",
            "--output",
            "probabilities",
            name="cnn",
        ),
    }
    return repo, outputs


@pytest.fixture(scope="module")
def server(exported: tuple[Path, dict[str, str]]) -> Iterator[ServerProcess]:
    with running_server(exported[0]) as process:
        yield process


def gru_reference(tokens: np.ndarray) -> np.ndarray:
    model = tm.GRUTextClassifier(vocab_size=VOCAB, hidden=24).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(tokens)).numpy()


def test_the_export_names_the_dims_and_checks_every_size(
    exported: tuple[Path, dict[str, str]],
) -> None:
    repo, outputs = exported
    report = json.loads((repo / "gru" / "1" / "export_report.json").read_text())
    assert report["inputs"] == [
        {"name": "tokens", "datatype": "INT64", "dims": [-1], "dim_names": {"1": "seq_len"}}
    ]
    assert report["variable_dims"] == {"seq_len": [3, 17, 64]}
    checked = {(c["batch"], c["sizes"]["seq_len"]) for c in report["parity"]["checks"]}
    assert checked == {(1, 17), (2, 17), (64, 17), (1, 3), (2, 3), (1, 64), (2, 64)}
    # token ids drawn over the whole vocabulary the embedding accepts, not 0..9
    assert report["generated_inputs"]["tokens"] == {
        "low": 0,
        "high": VOCAB,
        "origin": f"embedding embed (num_embeddings {VOCAB})",
    }
    assert report["source"]["init_args"] == {"vocab_size": VOCAB, "hidden": 24}
    assert "seq_len at 3, 17, 64" in outputs["gru"] and "of the output scale" in outputs["gru"]
    assert "narrow" not in outputs["gru"]
    graph = onnx.load(str(repo / "gru" / "1" / "model.onnx")).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq_len"]
    config = read_config(repo / "gru")
    assert config is not None and list(config.input[0].dims) == [-1]
    cnn = read_config(repo / "cnn")
    assert cnn is not None and list(cnn.input[0].dims) == [3, -1, -1]
    assert list(cnn.output[0].dims) == [5]


def test_gru_serves_every_length_in_one_concurrent_load(server: ServerProcess) -> None:
    """60 requests of lengths 3, 17 and 64 (batches of 1-4 rows) in flight at once, half over
    HTTP and half over gRPC: every answer equals PyTorch's for its own rows."""
    rng = np.random.default_rng(7)
    requests = [
        rng.integers(0, VOCAB, (int(rng.integers(1, 5)), LENGTHS[i % 3])).astype(np.int64)
        for i in range(60)
    ]
    http = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    grpc_answers: Queue[tuple[int, Any, Any]] = Queue()
    pending_http = {}
    for i, tokens in enumerate(requests):  # all of them in flight before any answer is read
        if i % 2:
            tensor = httpclient.InferInput("tokens", list(tokens.shape), "INT64")
            tensor.set_data_from_numpy(tokens)
            pending_http[i] = http.async_infer("gru", [tensor])
        else:
            tensor = grpcclient.InferInput("tokens", list(tokens.shape), "INT64")
            tensor.set_data_from_numpy(tokens)
            grpc.async_infer(
                "gru",
                [tensor],
                partial(lambda index, result, error: grpc_answers.put((index, result, error)), i),
            )
    answers: dict[int, np.ndarray] = {
        i: request.get_result().as_numpy("logits") for i, request in pending_http.items()
    }
    for _ in range(len(requests) - len(pending_http)):
        index, result, error = grpc_answers.get(timeout=120)
        assert error is None, error
        answers[index] = result.as_numpy("logits")
    http.close()
    grpc.close()
    for i, tokens in enumerate(requests):
        got = answers[i]
        np.testing.assert_allclose(got, gru_reference(tokens), rtol=1e-4, atol=1e-5)
    stats = httpclient.InferenceServerClient(server.http_url).get_inference_statistics("gru")
    assert stats["model_stats"][0]["inference_count"] == sum(len(t) for t in requests)


@pytest.mark.parametrize(("height", "width"), [(16, 16), (31, 9), (48, 64)])
def test_cnn_serves_any_image_size(server: ServerProcess, height: int, width: int) -> None:
    images = np.random.default_rng(height).standard_normal((3, 3, height, width))
    images = images.astype(np.float32)
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    got = client.infer("cnn", [tensor]).as_numpy("probabilities")
    with torch.inference_mode():
        want = tm.ConvBNDropout().eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
