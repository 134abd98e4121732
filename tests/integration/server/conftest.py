"""A repository with the test models and one shared `ferry serve` for the conformance tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.onnx_models import (
    bytes_model,
    mlp_model,
    two_io_model,
    write_classifier,
    write_model,
)
from tests.support.server_process import ServerProcess, running_server


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp", mlp_model())  # no config.pbtxt: auto-completed
    write_model(
        repo,
        "two_io",
        two_io_model(),
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500 }\n",
    )
    write_classifier(repo, "dynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    write_model(repo, "strings", bytes_model())
    write_model(repo, "nobatch", mlp_model(seed=5, batch_dim=2), "max_batch_size: 0\n")
    return repo


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerProcess]:
    with running_server(repository, "--http-max-request-bytes", str(1 << 20)) as process:
        yield process
