"""One tritonserver and one `ferry serve` on twin repositories for the whole parity package, and
the tally printed at the end of the run (requests compared, equal, deliberate differences)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.parity.exchange import TALLY
from tests.support.parity_models import write_twin_repositories
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import TritonServer, require_tritonserver, running_tritonserver


@dataclass(frozen=True)
class Twins:
    """The oracle and ferry, serving the same models in explicit model control mode."""

    triton: TritonServer
    ferry: ServerProcess
    ferry_repository: Path
    triton_repository: Path


@pytest.fixture(scope="package")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    require_tritonserver()
    ferry_repository = tmp_path_factory.mktemp("parity-ferry")
    triton_repository = tmp_path_factory.mktemp("parity-triton")
    write_twin_repositories(ferry_repository, triton_repository)
    explicit = ("--model-control-mode", "explicit", "--load-model", "*")
    with (
        running_tritonserver(triton_repository, *explicit) as triton,
        running_server(ferry_repository, *explicit, "--allow-client-shm") as ferry,
    ):
        yield Twins(triton, ferry, ferry_repository, triton_repository)
        assert ferry.process.poll() is None, ferry.log()
        assert triton.process.poll() is None, triton.log()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY["compared"]:
        terminalreporter.write_line(
            f"Triton parity: {TALLY['compared']} requests compared, {TALLY['equal']} equal, "
            f"{TALLY['deliberate']} deliberate differences"
        )
