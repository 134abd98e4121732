"""The supervisor's Triton trace file (`--trace-config triton,file=PATH` with `--workers N`).

Each worker sends its finished traces here over the control channel, and the supervisor writes
them as a single Triton server would: one trace counter for `log_frequency` (FILE.0, FILE.1,
... every N traces, or FILE at shutdown when 0), and trace ids numbered 1, 2, ... across the
whole server. A worker numbers its traces on its own, so the ids of each message (a trace and
its ensemble steps, whose `parent_id` names the ensemble's) are renumbered on arrival.
"""

from __future__ import annotations

import itertools
from typing import Any

from server.tracing import TraceEntries, TritonFileExporter


class TraceFileWriter:
    """Every worker's Triton-mode traces, into one trace file."""

    def __init__(self) -> None:
        self._exporter: TritonFileExporter | None = None
        self._ids = itertools.count(1)

    def add(self, file: str, log_frequency: int, entries: TraceEntries) -> None:
        """One trace of a worker (its steps' included); the first one sets the file and the
        frequency, as the first trace of a single server does."""
        if self._exporter is None:
            self._exporter = TritonFileExporter(file, log_frequency)
        renumbered: dict[Any, int] = {}
        for entry in entries:
            for key in ("id", "parent_id"):
                if key in entry:
                    if entry[key] not in renumbered:
                        renumbered[entry[key]] = next(self._ids)
                    entry[key] = renumbered[entry[key]]
        self._exporter.add(entries)

    def close(self) -> None:
        """Write what is left (the whole file when log_frequency is 0)."""
        if self._exporter is not None:
            self._exporter.close()
