"""A count-based tumbling window of signal rows with a staleness cap, in a fixed-size buffer."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class TumblingWindow:
    """Collects rows until `size` are in, then hands the full window out and starts afresh.

    A window older than `max_age_s` is closed early when it holds at least `min_rows`
    (evaluated on what it has), else discarded, so a quiet model never reports stale data.
    """

    def __init__(
        self,
        size: int,
        signals: int,
        max_age_s: float = 600.0,
        min_rows: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 2:
            raise ValueError("window size must be at least 2")
        self.size = size
        self.max_age_s = max_age_s
        self.min_rows = min(size, max(20, size // 10)) if min_rows is None else min_rows
        self._buffer = np.empty((size, signals), dtype=np.float64)
        self._filled = 0
        self._clock = clock
        self._opened_at = clock()
        self.expired = 0  # windows discarded for staleness

    @property
    def filled(self) -> int:
        """Rows in the open window."""
        return self._filled

    def add(self, rows: FloatArray) -> list[FloatArray]:
        """Append rows; returns the windows completed by them (copies), oldest first."""
        completed: list[FloatArray] = []
        start = 0
        while start < rows.shape[0]:
            if self._filled == 0:
                self._opened_at = self._clock()
            take = min(self.size - self._filled, rows.shape[0] - start)
            self._buffer[self._filled : self._filled + take] = rows[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.size:
                completed.append(self._buffer.copy())
                self._filled = 0
        return completed

    def close_if_stale(self) -> FloatArray | None:
        """The partial window when it is older than the cap and big enough; else None."""
        if self._filled == 0 or self._clock() - self._opened_at < self.max_age_s:
            return None
        rows, self._filled = self._buffer[: self._filled].copy(), 0
        if rows.shape[0] >= self.min_rows:
            return rows
        self.expired += 1
        return None
