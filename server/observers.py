"""Fans records out to the configured observers; an observer's failure never reaches a request."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from monitoring.observer import InferenceObserver, ObservedRecord

logger = logging.getLogger(__name__)


class ObserverFanout:
    """Calls every observer's `observe`, isolating their errors (logged once per observer)."""

    def __init__(self, observers: Sequence[InferenceObserver] = ()) -> None:
        self.observers = list(observers)
        self._failed: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.observers)

    def notify(self, record: ObservedRecord) -> None:
        """Hand one record to each observer."""
        for observer in self.observers:
            try:
                observer.observe(record)
            except Exception:
                if id(observer) not in self._failed:
                    self._failed.add(id(observer))
                    logger.exception("observer %r failed (logged once)", observer)
