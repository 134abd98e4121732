"""The server's sampling counters under `ferry serve --workers N` (server/sampling.py says what
they count): one table in a file of the supervisor's folder that the supervisor and every worker
map, each entry changed under an exclusive `flock` of that file.

So `--log-requests-rate 0.5` logs every second success of the server, and a trace setting's
`trace_rate` and `trace_count` count the server's requests, whichever worker took them. The lock
is taken only for a request that sampling looks at (tracing on, or a request-log rate below 1):
two system calls, and the entry's 32 bytes.

Entries: (key hash, state, first, second), found by open addressing from the key's hash. An
entry is never removed: a trace setting's counter restarts with every new setting (Triton's
rule), so when a trace setting change has reached every worker the supervisor marks the entries
it replaced as restarted (`restart_traces`), and the next request takes the sampler's initial
values. A key that finds the table full keeps a counter of its own worker (logged once).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from server.sampling import REQUEST_LOG_KEY, LocalCounter, SampleCounter, Step, trace_key
from server.workers.mapped_file import LockedIntegers

logger = logging.getLogger("ferry.workers")

SAMPLING_FILE = "sampling"
ENTRIES = 1024
_FIELDS = 4  # key hash, state, first, second
_EMPTY, _SET, _RESTARTED = 0, 1, 2


def key_hash(key: str) -> int:
    """A key's 64-bit hash, never 0 (0 marks an empty entry)."""
    value = int.from_bytes(
        hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True
    )
    return value or 1


class SamplingTable:
    """The table in `folder`'s sampling file (created zeroed by the first to open it)."""

    def __init__(self, folder: Path, entries: int = ENTRIES) -> None:
        self._entries = entries
        self._table = LockedIntegers(folder / SAMPLING_FILE, entries * _FIELDS)
        self._full_warned = False

    def _find(self, fields: memoryview, hashed: int) -> int | None:
        """The entry of `hashed`, or the empty entry where it goes; None when the table is full
        without it."""
        start = hashed % self._entries
        for probe in range(self._entries):
            base = ((start + probe) % self._entries) * _FIELDS
            if fields[base] == hashed or fields[base] == 0:
                return base
        return None

    def counter(self, key: str, first: int, second: int) -> SampleCounter:
        """A sampler's counter, with the values it starts from (a CounterFactory)."""
        return SharedCounter(self, key_hash(key), first, second)

    def update(self, hashed: int, initial: tuple[int, int], step: Step) -> bool | None:
        """`step` on the entry of `hashed` (from `initial` when it is new or restarted); None
        when the table is full without it."""
        with self._table.locked() as fields:
            base = self._find(fields, hashed)
            if base is None:
                if not self._full_warned:
                    self._full_warned = True
                    logger.warning(
                        "the sampling table is full (%d counters): a new trace setting samples "
                        "this worker's requests only",
                        self._entries,
                    )
                return None
            if fields[base + 1] == _SET:
                first, second = fields[base + 2], fields[base + 3]
            else:
                first, second = initial
            first, second, picked = step(first, second)
            fields[base], fields[base + 1] = hashed, _SET
            fields[base + 2], fields[base + 3] = first, second
            return picked

    def restart_traces(self, model: str) -> None:
        """A trace setting changed on every worker: the counters it replaced start again (the
        global setting's change replaces every model's sampler too: all trace counters)."""
        keep = key_hash(REQUEST_LOG_KEY)
        only = key_hash(trace_key(model)) if model else None
        with self._table.locked() as fields:
            for base in range(0, self._entries * _FIELDS, _FIELDS):
                hashed = fields[base]
                if hashed != 0 and hashed != keep and (only is None or hashed == only):
                    fields[base + 1] = _RESTARTED

    def close(self) -> None:
        self._table.close()


class SharedCounter:
    """One sampler's entry in the table; its own worker's counter if the table is full."""

    __slots__ = ("_hashed", "_initial", "_local", "_table")

    def __init__(self, table: SamplingTable, hashed: int, first: int, second: int) -> None:
        self._table, self._hashed, self._initial = table, hashed, (first, second)
        self._local: LocalCounter | None = None

    def update(self, step: Step) -> bool:
        if self._local is None:
            picked = self._table.update(self._hashed, self._initial, step)
            if picked is not None:
                return picked
            self._local = LocalCounter(*self._initial)
        return self._local.update(step)
