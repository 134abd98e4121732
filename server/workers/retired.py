"""What a worker counted before it died stays in the server's totals.

The supervisor keeps, per live worker, the last statistics and metric families that worker
answered (refreshed every REFRESH_S by a timer in the supervisor, and by every read of
statistics or metrics, whoever asks); when the worker dies, that last answer is folded into
`retired` totals that every later merge adds. Only what adds up is kept: Triton statistics
(counts, nanoseconds, batch_stats) and the counter, histogram and summary families summed
across workers. Gauges (ready, pending requests, ...) and the shared drift evaluator's figures
die with the worker.

Why here and not in the workers (a snapshot file each, counters in shared memory,
prometheus_client's multiprocess mode): the request path and the workers' counters stay as they
are. Counters in shared memory would be exact, but every request writes some 14 numbers
(statistics, series, histogram buckets), and struct writes into an mmap cost about 0.6 µs more a
request than the plain attributes they would replace (1.6 against 1.0 µs on this machine), where
a worker serves 7-10k requests a second; the label sets (models loaded at run time, protocols,
failure reasons, batch sizes) would also need a layout allocated across processes. A snapshot
file written by each worker every REFRESH_S costs the worker what a refresh costs and loses the
same last interval. Here each worker answers two requests (statistics, families) per REFRESH_S,
off the request path: 1.4-3.4 ms of its CPU a second (one to eight models; README, "Workers").

What it misses: the requests a worker answered after its last refresh, when it is killed
(at most REFRESH_S worth of one worker's requests). No read ever showed them (every read
refreshes first and merges what it just remembered), so totals never go down: a counter stays
monotonic across a restart.

A retired count is added only to a version some live worker serves, and is forgotten where a
repository control call resets that version's numbers on the workers (a version reloaded from
changed files: its statistics; a version unloaded: its statistics and its metric series), as a
single server forgets them.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric

from server.workers.merge import (
    WireFamily,
    cumulative_families,
    merge_families,
    merge_statistics,
    merge_wire,
)

REFRESH_S = 1.0  # how often the supervisor asks every worker for its numbers

VersionKey = tuple[str, str]  # (model name, version)


@dataclass
class _Last:
    """The last numbers one live worker answered, each with the epoch it was asked in."""

    statistics: dict[VersionKey, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    families: list[WireFamily] = field(default_factory=list)
    families_asked: int = 0


class RetiredCounts:
    """Every live worker's last numbers, and what the workers that died had counted.

    `epoch` counts the resets (forget); an answer asked before a version's last reset may hold
    that version's numbers from before it, so a worker retired later does not bring them back
    (a worker that dies while a control call runs is retired before or after the call's reset
    is known, whichever comes first)."""

    def __init__(self) -> None:
        self._last: dict[Hashable, _Last] = {}
        self.statistics: dict[VersionKey, dict[str, Any]] = {}
        self.families: list[WireFamily] = []
        self.epoch = 0
        self._statistics_reset: dict[VersionKey, int] = {}  # version -> epoch of its last reset
        self._series_reset: dict[VersionKey, int] = {}

    def join(self, worker: Hashable) -> None:
        """A worker connected: it has counted nothing yet."""
        self._last[worker] = _Last()

    def is_live(self, worker: Hashable) -> bool:
        """Joined and not retired: its answers are not in the retired counts."""
        return worker in self._last

    def remember_statistics(
        self,
        worker: Hashable,
        name: str,
        version: str,
        entries: list[dict[str, Any]],
        asked: int,
    ) -> None:
        """A worker's answer to a statistics call for `name` and `version` ('' for all), asked
        in epoch `asked`."""
        last = self._last.get(worker)
        if last is None:  # it died meanwhile (and was retired)
            return
        for key in [k for k in last.statistics if _selected(k, name, version)]:
            del last.statistics[key]  # it answered without them: it no longer has them
        for entry in entries:
            last.statistics[(entry["name"], entry["version"])] = (asked, entry)

    def remember_families(self, worker: Hashable, families: list[WireFamily], asked: int) -> None:
        """A worker's metric families, asked in epoch `asked`."""
        last = self._last.get(worker)
        if last is not None:
            last.families, last.families_asked = families, asked

    def retire(self, worker: Hashable) -> None:
        """A worker died: what it answered last joins the retired totals (but for versions
        reset since it was asked)."""
        last = self._last.pop(worker, None)
        if last is None:
            return
        for key, (asked, entry) in last.statistics.items():
            if asked < self._statistics_reset.get(key, 0):
                continue
            kept = self.statistics.get(key)
            self.statistics[key] = (
                copy.deepcopy(entry) if kept is None else merge_statistics([[kept], [entry]])[0]
            )
        reset = {k for k, at in self._series_reset.items() if last.families_asked < at}
        families = _without_series(cumulative_families(last.families), reset)
        self.families = merge_wire([self.families, families])

    def forget(self, statistics: Iterable[VersionKey], series: Iterable[VersionKey]) -> None:
        """The workers reset these versions' statistics and metric series (a control call): the
        retired numbers, and the answers asked before, no longer apply."""
        stale, gone = set(statistics), set(series)
        if not stale and not gone:
            return
        self.epoch += 1
        for key in stale:
            self.statistics.pop(key, None)
            self._statistics_reset[key] = self.epoch
        for key in gone:
            self._series_reset[key] = self.epoch
        self.families = _without_series(self.families, gone)

    def forget_model(self, name: str) -> None:
        """forget, for every version of model `name`."""
        keys = {*self.statistics, *(k for last in self._last.values() for k in last.statistics)}
        keys.update(
            _series_key(labels)
            for families in (self.families, *(last.families for last in self._last.values()))
            for _, _, _, samples in families
            for _, labels, _ in samples
            if "model" in labels
        )
        mine = {key for key in keys if key[0] == name}
        self.forget(mine, mine)

    def merged_statistics(self, per_worker: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The live workers' statistics merged, plus the retired counts of those versions."""
        live = merge_statistics(per_worker)
        retired = [
            self.statistics[key]
            for entry in live
            if (key := (entry["name"], entry["version"])) in self.statistics
        ]
        return merge_statistics([live, retired]) if retired else live

    def merged_families(self, per_worker: Iterable[list[WireFamily]]) -> list[Metric]:
        """The live workers' families merged, plus the retired series of the versions (and the
        series of no model, such as process_*) that some live worker reports."""
        wires = list(per_worker)
        if not self.families:
            return merge_families(wires)
        served = {
            _series_key(labels)
            for wire in wires
            for _, _, _, samples in wire
            for _, labels, _ in samples
            if "model" in labels
        }
        retired = [
            (name, documentation, kind, kept)
            for name, documentation, kind, samples in self.families
            if (kept := [s for s in samples if "model" not in s[1] or _series_key(s[1]) in served])
        ]
        return merge_families([*wires, retired])


def _selected(key: VersionKey, name: str, version: str) -> bool:
    return (not name or key[0] == name) and (not version or key[1] == version)


def _series_key(labels: dict[str, str]) -> VersionKey:
    return labels["model"], labels.get("version", "")


def _without_series(families: list[WireFamily], gone: set[VersionKey]) -> list[WireFamily]:
    if not gone:
        return families
    return [
        (
            name,
            documentation,
            kind,
            [s for s in samples if "model" not in s[1] or _series_key(s[1]) not in gone],
        )
        for name, documentation, kind, samples in families
    ]
