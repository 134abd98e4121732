"""`ferry serve` starts one worker per CPU unless told otherwise, and `--workers N` runs each
model in its owner unless told otherwise: the settings the command line builds, read where the
server would start."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import server.app
from ferry.cli import app
from server.settings import ServerSettings
from server.workers.count import auto_workers


def _started_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str]
) -> ServerSettings:
    started: list[ServerSettings] = []

    def run_server(settings: ServerSettings) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(server.app, "run_server", run_server)
    result = CliRunner().invoke(app, ["serve", "--model-repository", str(tmp_path), *flags])
    assert result.exit_code == 0, result.output
    [settings] = started
    return settings


@pytest.mark.parametrize(
    ("flags", "shared"),
    [
        ([], True),
        (["--shared-batching"], True),
        (["--no-shared-batching"], False),
    ],
)
def test_workers_share_batching_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], shared: bool
) -> None:
    settings = _started_settings(tmp_path, monkeypatch, ["--workers", "2", *flags])
    assert settings.workers == 2
    assert settings.shared_batching is shared


def test_the_default_is_one_worker_per_cpu_and_1_is_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _started_settings(tmp_path, monkeypatch, []).workers == auto_workers()
    assert _started_settings(tmp_path, monkeypatch, ["--workers", "0"]).workers == auto_workers()
    assert _started_settings(tmp_path, monkeypatch, ["--workers", "1"]).workers == 1


def test_a_port_left_to_the_kernel_serves_in_one_process_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers share fixed ports: `--http-port 0` (or gRPC's) with the default is one process,
    where an explicit `--workers 2` is refused (test_check_settings.py)."""
    for port in ("--http-port", "--grpc-port"):
        assert _started_settings(tmp_path, monkeypatch, [port, "0"]).workers == 1
