"""Run `ferry export` in process through typer, as the export tests do."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ferry.cli import app

runner = CliRunner()


def ferry_export(repo: Path, source: str, *args: str, name: str = "m") -> tuple[int, str]:
    """Run `ferry export SOURCE --name NAME --model-repository REPO ARGS`: (exit code, output)."""
    result = runner.invoke(
        app, ["export", source, "--name", name, "--model-repository", str(repo), *args]
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def export_ok(repo: Path, source: str, *args: str, name: str = "m") -> str:
    """`ferry_export` that must succeed; returns its output."""
    code, output = ferry_export(repo, source, *args, name=name)
    assert code == 0, output
    return output
