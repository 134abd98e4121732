"""`ferry serve --workers N` runs each model in its owner unless told otherwise: the settings the
command line builds, read where the server would start."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import server.app
from ferry.cli import app
from server.settings import ServerSettings


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
    started: list[ServerSettings] = []

    def run_server(settings: ServerSettings) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(server.app, "run_server", run_server)
    command = ["serve", "--model-repository", str(tmp_path), "--workers", "2", *flags]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    [settings] = started
    assert settings.workers == 2
    assert settings.shared_batching is shared
