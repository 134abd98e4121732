"""What operators switch on around inference: the request log, traces, the response cache and
the logging extension's settings, held together for the data plane (all off by default)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import ErrorKind, ServingError
from server.logs import LogControl, LogSettings
from server.model import ModelVersion
from server.request_log import RequestLog
from server.response_cache import ResponseCache, request_key
from server.trace_settings import Change, TraceSetting, TraceSettings
from server.tracing import Tracer
from server.types import InferenceRequest


def plain_status(protocol: str, kind: ErrorKind | None) -> str:
    """A status without a transport's table (the app wires in the transports' own)."""
    return "OK" if kind is None else kind.name


@dataclass
class CacheLookup:
    """A request's cache key, what looking it up cost, and the cached outputs (None: a miss)."""

    key: bytes
    lookup_s: float
    outputs: dict[str, np.ndarray] | None


class Operations:
    """The request log, the tracer, the response cache (None: no --cache-config) and the log
    control (None: logging not set up by ferry serve, e.g. in tests)."""

    def __init__(
        self,
        request_log: RequestLog | None = None,
        tracer: Tracer | None = None,
        response_cache: ResponseCache | None = None,
        log_control: LogControl | None = None,
    ) -> None:
        self.request_log = request_log or RequestLog(plain_status)
        self.tracer = tracer or Tracer(TraceSettings(TraceSetting()))
        self.response_cache = response_cache
        self.log_control = log_control
        # whether the transports pass the client address and traceparent down (a plain
        # attribute: the transports read it on every request)
        self.request_context = self.request_log.enabled or self.tracer.active

    # --- response cache ------------------------------------------------------------------------

    def cache_lookup(self, model: ModelVersion, request: InferenceRequest) -> CacheLookup:
        assert self.response_cache is not None
        started = time.perf_counter()
        key = request_key(model.name, model.version, request)
        outputs = self.response_cache.lookup(key)
        lookup_s = time.perf_counter() - started
        self.response_cache.counters.lookup_s += lookup_s
        return CacheLookup(key, lookup_s, outputs)

    def cache_insert(self, lookup: CacheLookup, outputs: Mapping[str, np.ndarray]) -> float:
        """Store a computed response; the miss's cache time (lookup + insertion)."""
        assert self.response_cache is not None
        started = time.perf_counter()
        self.response_cache.insert(lookup.key, outputs)
        insertion_s = time.perf_counter() - started
        self.response_cache.counters.insertion_s += insertion_s
        return lookup.lookup_s + insertion_s

    # --- logging and trace extensions ----------------------------------------------------------

    def log_settings(self) -> dict[str, Any]:
        settings = self.log_control.settings if self.log_control else LogSettings()
        return settings.as_json()

    def update_log_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        if self.log_control is None:
            raise ServingError(ErrorKind.UNAVAILABLE, "the server does not support dynamic logging")
        return self.log_control.update(changes).as_json()

    def update_trace_settings(self, model: str, changes: Mapping[str, Change]) -> dict[str, Any]:
        try:
            return self.tracer.settings.update(model, changes).as_json()
        finally:  # a global update that fails on a model's setting has changed the global one
            self.request_context = self.request_log.enabled or self.tracer.active

    def trace_snapshot(self) -> dict[str, dict[str, Change]]:
        """The trace settings the protocol changed (server/trace_settings.py)."""
        return self.tracer.settings.snapshot()

    def restore_trace_settings(self, snapshot: Mapping[str, Mapping[str, Change]]) -> None:
        """The trace settings as another server has them (a worker of `--workers N`)."""
        try:
            self.tracer.settings.restore(snapshot)
        finally:
            self.request_context = self.request_log.enabled or self.tracer.active

    def close(self) -> None:
        """Flush traces still waiting to be exported."""
        self.tracer.close()
