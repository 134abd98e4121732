"""What the server says about requests and models in its log.

- `RequestLog`: with `--log-requests`, one line per inference request (protocol, model, version,
  status, latency, batch size, request id, client address), successes sampled by
  `--log-requests-rate`; whatever the flag, every server-side failure (HTTP 5xx: INTERNAL at
  ERROR, UNAVAILABLE/UNSUPPORTED at WARNING) is logged once.
- `ModelEventLog`: an observer that logs each model version state change once (READY at INFO,
  unloaded or no longer ready at WARNING, failed to load at ERROR); under `--workers N
  --shared-batching` in the model's owner only.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from monitoring.observer import ModelEventRecord, ObservedRecord
from server.errors import ErrorKind, ServingError
from server.logs import FIELDS_ATTRIBUTE
from server.sampling import REQUEST_LOG_KEY, CounterFactory, local_counter
from server.types import InferenceRequest

request_logger = logging.getLogger("ferry.requests")
model_logger = logging.getLogger("ferry.models")

# (protocol, error kind or None for success) -> the status the client saw ("200", "OK"...)
StatusText = Callable[[str, ErrorKind | None], str]
LEVEL_BY_KIND = {
    ErrorKind.INTERNAL: logging.ERROR,
    ErrorKind.UNKNOWN: logging.ERROR,
    ErrorKind.UNAVAILABLE: logging.WARNING,
    ErrorKind.UNSUPPORTED: logging.WARNING,
}


def kind_of(error: BaseException) -> ErrorKind:
    """The error kind a failed request ends with (the transports answer the same)."""
    if isinstance(error, ServingError):
        return error.kind
    if isinstance(error, asyncio.CancelledError):
        return ErrorKind.CANCELLED
    return ErrorKind.INTERNAL


class RequestLog:
    """Request lines; `enabled` is --log-requests, `rate` the share of successes logged."""

    def __init__(
        self,
        status_text: StatusText,
        enabled: bool = False,
        rate: float = 1.0,
        counters: CounterFactory = local_counter,
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError("--log-requests-rate must be in (0, 1]")
        self.status_text = status_text
        self.enabled = enabled
        self.rate = rate
        # successes seen (the server's in a worker of `--workers N`)
        self._counter = counters(REQUEST_LOG_KEY, 0, 0)

    def _step(self, seen: int, _unused: int) -> tuple[int, int, bool]:
        """The n-th success is logged when it takes `n * rate` past a whole number: exactly
        `rate` of them, evenly spread (deterministic, unlike a coin flip)."""
        rate = self.rate
        return seen + 1, 0, math.floor((seen + 1) * rate) > math.floor(seen * rate)

    def _sampled(self) -> bool:
        return self.rate >= 1.0 or self._counter.update(self._step)

    def success(
        self,
        request: InferenceRequest,
        model: str,
        version: str,
        rows: int,
        elapsed_s: float,
        cache_hit: bool = False,
    ) -> None:
        """A request that was answered (call only when `enabled`)."""
        if self._sampled():
            fields = self._fields(request, model, version, None, rows, elapsed_s)
            if cache_hit:
                fields["cache"] = "hit"
            request_logger.info("inference", extra={FIELDS_ATTRIBUTE: fields})

    def failure(
        self,
        request: InferenceRequest,
        model: str,
        version: str,
        elapsed_s: float,
        error: BaseException,
    ) -> None:
        """A request that failed: logged when it is the server's failure, or with --log-requests."""
        kind = kind_of(error)
        level = LEVEL_BY_KIND.get(kind, logging.INFO)
        if level == logging.INFO and not self.enabled:
            return
        fields = self._fields(request, model, version, kind, 0, elapsed_s)
        fields["error"] = error.message if isinstance(error, ServingError) else repr(error)
        unexpected = not isinstance(error, (ServingError, asyncio.CancelledError))
        request_logger.log(
            level,
            "inference failed",
            extra={FIELDS_ATTRIBUTE: fields},
            exc_info=error if unexpected else None,
        )

    def _fields(
        self,
        request: InferenceRequest,
        model: str,
        version: str,
        kind: ErrorKind | None,
        rows: int,
        elapsed_s: float,
    ) -> dict[str, Any]:
        return {
            "protocol": request.protocol,
            "model": model,
            "version": version,
            "status": self.status_text(request.protocol, kind),
            "latency_ms": round(elapsed_s * 1e3, 3),
            "batch_size": rows,
            "request_id": request.id,
            "client": request.client,
        }


class ModelEventLog:
    """Observer: one log line per model version state change. A version that was READY and
    stops serving for a reason other than an unload (an ensemble whose composing model went
    away) is 'not ready' at WARNING; one that never served 'failed to load' at ERROR.

    `logs(model)` says whether this process logs a model's changes: under `--workers N
    --shared-batching` the model's owner only, so the server says each change once (the
    others follow the owner's load and hold no weights; without the flag every worker loads
    every model itself and says so)."""

    def __init__(self, logs: Callable[[str], bool] | None = None) -> None:
        self._ready: set[tuple[str, str]] = set()
        self._logs = logs

    def observe(self, record: ObservedRecord) -> None:
        if not isinstance(record, ModelEventRecord):
            return
        if self._logs is not None and not self._logs(record.model):
            return
        fields: dict[str, Any] = {"model": record.model, "version": record.version or "-"}
        fields["state"] = record.state
        key = (record.model, record.version)
        was_ready = key in self._ready
        self._ready.discard(key)
        if record.state == "READY":
            self._ready.add(key)
            if record.load_duration_s is not None:
                fields["load_s"] = round(record.load_duration_s, 3)
            model_logger.info(
                "model '%s' version %s is READY",
                record.model,
                record.version,
                extra={FIELDS_ATTRIBUTE: fields},
            )
            return
        fields["reason"] = record.reason
        which = f"model '{record.model}'" + (f" version {record.version}" if record.version else "")
        if record.reason == "unloaded":
            model_logger.warning("%s unloaded", which, extra={FIELDS_ATTRIBUTE: fields})
        elif was_ready:
            model_logger.warning(
                "%s is not ready: %s", which, record.reason, extra={FIELDS_ATTRIBUTE: fields}
            )
        else:
            model_logger.error(
                "%s failed to load: %s", which, record.reason, extra={FIELDS_ATTRIBUTE: fields}
            )
