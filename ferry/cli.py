"""Composes the `ferry` command from the packages' typer commands."""

from __future__ import annotations

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


def main() -> None:
    """Entry point of the `ferry` console script."""
    app()
