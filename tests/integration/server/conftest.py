"""A repository with the test models and one shared `ferry serve` for the conformance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.onnx_models import bytes_model, mlp_model, two_io_model, write_model
from tests.support.server_process import ServerProcess, running_server

CLASSIFIER_CONFIG = """
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp", mlp_model())  # no config.pbtxt: auto-completed
    write_model(repo, "two_io", two_io_model(),
                "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n")
    model_dir = write_model(repo, "classifier", mlp_model(seed=3), CLASSIFIER_CONFIG)
    (model_dir / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    write_model(repo, "strings", bytes_model())
    write_model(repo, "nobatch", mlp_model(seed=5, batch_dim=2), "max_batch_size: 0\n")
    return repo


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerProcess]:
    with running_server(repository, "--http-max-request-bytes", str(1 << 20)) as process:
        yield process
