"""One error family below the transports.

    ServingError(kind, message)
      kind: ErrorKind  -- what went wrong, in Triton's vocabulary; each transport maps kinds to an
                          HTTP status / gRPC code in one table (server/protocol/status.py).

The core never names HTTP codes: a transport decides how a kind looks on its wire.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """Triton's error codes (TRITONSERVER_Error_Code)."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class ServingError(Exception):
    """A request or control call failed for a reason the client should be told."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.kind.name}, {self.message!r})"


class WorkerGone(ServingError):
    """Another worker of `--workers N` cannot answer (UNAVAILABLE): one of the two below."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, message)


class WorkerUnreachable(WorkerGone):
    """The worker a request was to be forwarded to takes no connection (it is restarting):
    the request never left this worker."""


class WorkerStopped(WorkerGone):
    """The worker a request was forwarded to stopped before it answered (its connection
    closed): what it had begun is lost."""


def invalid(message: str) -> ServingError:
    """Shorthand for the most common error: the client sent something wrong."""
    return ServingError(ErrorKind.INVALID_ARG, message)
