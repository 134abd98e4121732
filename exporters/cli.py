"""`ferry export` (being built in issue 3)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the ferry app."""
