"""Container args checked by ferry's own `ferry serve` command line."""

from __future__ import annotations

import sys
from typing import Any

from .paths import REPO


def parse_serve_args(args: list[str]) -> dict[str, Any]:
    """Parse `ferry serve ARGS` with ferry's own typer/click command; raises ValueError."""
    import typer

    try:  # typer >= 0.20 vendors click as typer._click
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click  # type: ignore[no-redef]

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from ferry.cli import app

    group = typer.main.get_command(app)
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    try:
        ctx = serve.make_context("ferry serve", list(args))
    except click.exceptions.ClickException as error:
        raise ValueError(error.format_message()) from None
    except (SystemExit, RuntimeError) as error:  # --help and friends: typer's Exit
        raise ValueError(f"`ferry serve {' '.join(args)}` exits without serving") from error
    return dict(ctx.params)
