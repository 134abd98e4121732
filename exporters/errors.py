"""The one error family of the exporter: a clear message a user can act on, no traceback."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(Exception):
    """An export that cannot go on; `stage` says where (load, export, verify, write)."""

    def __init__(self, message: str, stage: str = "export", detail: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.detail = detail

    def __str__(self) -> str:
        return self.message


def summarize_exception(exc: BaseException, max_lines: int = 12, max_chars: int = 1500) -> str:
    """The reason inside an exception, short: the exporter's 'Exception summary' when present."""
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
        text = text.split("(Refer to the full stack trace", 1)[0]
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and line.strip() != "⬆️"]
    if not lines:
        lines = [type(exc).__name__]
    summary = "\n".join(lines[:max_lines])
    if len(lines) > max_lines:
        summary += "\n…"
    if len(summary) > max_chars:
        summary = summary[:max_chars].rstrip() + " …"
    return f"{type(exc).__name__}: {summary}" if not summary.startswith("<class") else summary
