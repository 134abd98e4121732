"""A bounded queue of monitored rows between the thread that serves and the one that evaluates.

The serving side only appends references to the request's arrays (no copy); a full intake
counts the rows it refuses instead of growing, so a client can never make it hold more than
`max_rows` rows or `max_bytes` bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

MAX_PENDING_BYTES = 64 * 1024 * 1024
# (inputs, outputs, rows, has_row_axis): has_row_axis is False for one request of a model that
# does not batch (its tensors are one row without a leading row dimension)
Item = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int, bool]


def pending_rows_for(window: int) -> int:
    """How many rows may wait for evaluation: two windows, at least 1,024."""
    return max(2 * window, 1024)


class RowIntake:
    """Rows waiting for the evaluating side; `offer` runs on the server loop.

    `sample_rate` (`ferry serve --drift-sample-rate`) is the fraction of requests it takes,
    evenly spread (every second one at 0.5): at thousands of requests a second a sample fills
    windows as well, for that fraction of the cost; the requests left out are not dropped rows."""

    def __init__(
        self, max_rows: int, max_bytes: int = MAX_PENDING_BYTES, sample_rate: float = 1.0
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError("the drift sample rate must be in (0, 1]")
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.sample_rate = sample_rate
        self._credit = 0.0  # sampling: a request is taken each time this reaches 1
        self.dropped_rows = 0
        self._lock = threading.Lock()
        self._items: list[Item] = []
        self._rows = self._bytes = 0
        self._dropping = False  # dropped a request since the last take

    def offer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        rows: int,
        has_row_axis: bool,
    ) -> bool:
        """Queue one request's rows, if the sample takes it (`sampled`); True when a drain is
        due (`queue`)."""
        return self.sampled() and self.queue(inputs, outputs, rows, has_row_axis)

    def sampled(self) -> bool:
        """Whether the sample takes the next request (always at a sample rate of 1)."""
        if self.sample_rate < 1.0:
            self._credit += self.sample_rate
            if self._credit < 1.0:
                return False
            self._credit -= 1.0
        return True

    def queue(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        rows: int,
        has_row_axis: bool,
    ) -> bool:
        """Queue one request's rows, or count them dropped when full; True when a drain is due:
        on the request that fills a quarter, and on the first one dropped (not on every request
        after them: a wake-up costs the event loop a few microseconds)."""
        size = 0
        for array in outputs.values():
            size += getattr(array, "nbytes", 0)
        for array in inputs.values():
            size += getattr(array, "nbytes", 0)
        with self._lock:
            before = self._rows
            if before + rows > self.max_rows or self._bytes + size > self.max_bytes:
                first_drop = not self._dropping
                self.dropped_rows += rows
                self._dropping = True
                return first_drop
            self._items.append((inputs, outputs, rows, has_row_axis))
            self._rows = before + rows
            self._bytes += size
            return before * 4 < self.max_rows <= self._rows * 4

    @property
    def queued_rows(self) -> int:
        """Rows waiting now."""
        return self._rows

    def take(self) -> list[Item]:
        """Everything queued, oldest first; the intake is empty afterwards."""
        with self._lock:
            items, self._items = self._items, []
            self._rows = self._bytes = 0
            self._dropping = False
        return items


Tensors = dict[str, np.ndarray]


def stack(items: list[Item], names: tuple[tuple[str, str], ...]) -> tuple[Tensors, Tensors, int]:
    """The named tensors ((scope, name) pairs) of several requests joined along a leading row
    axis; ValueError or KeyError when a request lacks one or the shapes or row counts differ."""
    joined: dict[str, Tensors] = {"inputs": {}, "outputs": {}}
    for scope, name in names:
        arrays = []
        for inputs, outputs, _, has_row_axis in items:
            array = np.asarray((inputs if scope == "inputs" else outputs)[name])
            arrays.append(array if has_row_axis else array[None])
        joined[scope][name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    rows = sum(item[2] for item in items)
    for group in joined.values():
        if any(a.shape[0] != rows for a in group.values()):
            raise ValueError("row counts disagree")
    return joined["inputs"], joined["outputs"], rows


def stack_groups(
    items: list[Item], names: tuple[tuple[str, str], ...]
) -> tuple[list[tuple[Tensors, Tensors, int]], int]:
    """Queued requests as few stacked groups (one when their shapes agree, else one per
    request), and the rows of requests that cannot be stacked at all (a named tensor missing,
    row counts that disagree): those are counted, not returned."""
    try:
        return [stack(items, names)], 0
    except (ValueError, KeyError):
        groups, skipped = [], 0
        for item in items:
            try:
                groups.append(stack([item], names))
            except (ValueError, KeyError):
                skipped += item[2]
        return groups, skipped
