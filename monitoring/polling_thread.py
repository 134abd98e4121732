"""A daemon thread that runs one pass every `poll_s` seconds, or at once when woken."""

from __future__ import annotations

import threading
from collections.abc import Callable


class PollingThread:
    """Runs `step` on its own thread until stopped; `wake` makes the next pass start now."""

    def __init__(self, name: str, step: Callable[[], None], poll_s: float) -> None:
        self.name, self.step, self.poll_s = name, step, poll_s
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the pass under way (waiting at most `timeout_s`)."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if not self.stopping.is_set():
                self.step()
