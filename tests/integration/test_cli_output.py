"""What the `ferry` command prints when piped: whole option names in --help, escaped messages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from ferry.cli import app


def commands() -> Iterator[tuple[list[str], Any]]:
    """Every leaf command of the ferry app (typer ships its own click, so duck typing)."""
    stack: list[tuple[list[str], Any]] = [([], typer.main.get_command(app))]
    while stack:
        path, command = stack.pop()
        if hasattr(command, "list_commands"):
            context = type(command).context_class(command)
            for name in command.list_commands(context):
                stack.append(([*path, name], command.get_command(context, name)))
        else:
            yield path, command


def piped(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("path", [path for path, _ in commands()], ids=" ".join)
def test_help_never_cuts_option_names_when_piped(path: list[str]) -> None:
    command = dict((tuple(p), c) for p, c in commands())[tuple(path)]
    result = piped(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    names = [
        option
        for param in command.params
        if param.param_type_name == "option"
        for option in [*param.opts, *param.secondary_opts]
        if option.startswith("--")
    ]
    assert names
    for name in names:
        assert name in result.stdout, f"{name} missing or cut in `ferry {' '.join(path)} --help`"


def test_messages_keep_square_brackets(tmp_path: Path) -> None:
    """Rich markup is escaped: the install hint says 'ferry[gpu]', not 'ferry'."""
    result = piped(
        "optimize",
        "mlp",
        "--model-repository",
        str(tmp_path),
        "--eval-data",
        str(tmp_path / "eval.npz"),
        "--target",
        "tensorrt",
    )
    if "needs" not in result.stderr:
        pytest.skip("this machine can run --target tensorrt: no install hint to print")
    assert result.returncode == 2
    assert "pip install 'ferry[gpu]'" in " ".join(result.stderr.split())


def test_make_serve_takes_the_port_variables() -> None:
    """`make serve HTTP_PORT=... GRPC_PORT=... METRICS_PORT=...` passes them to ferry serve."""
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(root),
            "serve",
            "HTTP_PORT=9100",
            "GRPC_PORT=9101",
            "METRICS_PORT=9102",
            "EXAMPLE_REPO=" + str(root / "tests"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "ferry serve --model-repository" in command
    assert "--http-port 9100 --grpc-port 9101 --metrics-port 9102" in command
    default = subprocess.run(
        ["make", "-n", "-C", str(root), "serve", "EXAMPLE_REPO=" + str(root / "tests")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--http-port 8000 --grpc-port 8001 --metrics-port 8002" in " ".join(
        default.stdout.replace("\\\n", " ").split()
    )
