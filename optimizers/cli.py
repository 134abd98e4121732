"""`ferry optimize` (being built in issue 4)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the ferry app."""
