"""Composes the `ferry` command from the packages' typer commands."""

from __future__ import annotations

import os
import sys

import typer

from exporters.cli import register as register_export
from measure.cli import register as register_bench
from monitoring.cli import register as register_monitoring
from optimizers.cli import register as register_optimize
from server.cli import register as register_serve
from server.version import __version__

app = typer.Typer(
    name="ferry",
    help="Export, optimize, serve and monitor PyTorch models (KServe v2 / Triton compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, help="Print ferry's version and exit."
    ),
) -> None:
    """Export, optimize, serve and monitor PyTorch models (KServe v2 / Triton compatible)."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()


register_serve(app)
register_export(app)
register_optimize(app)
register_monitoring(app)
register_bench(app)


# Piped, Rich assumes 80 columns and cuts option names in --help tables ("--model-reposit…");
# 180 fits the longest (Triton's --grpc-http2-min-recv-ping-interval-without-data, 46 characters)
# beside its help text.
PIPED_HELP_WIDTH = 180


def use_wide_help_when_piped() -> None:
    """--help tables follow the terminal's width; when stdout is not a terminal (and neither
    COLUMNS nor TERMINAL_WIDTH says otherwise) they get PIPED_HELP_WIDTH columns instead."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ or "TERMINAL_WIDTH" in os.environ:
        return
    from typer import rich_utils

    rich_utils.MAX_WIDTH = PIPED_HELP_WIDTH


def main() -> None:
    """Entry point of the `ferry` console script."""
    use_wide_help_when_piped()
    app()
