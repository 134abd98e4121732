"""The one place where error kinds become HTTP statuses and gRPC codes (Triton's tables)."""

from __future__ import annotations

import grpc

from server.errors import ErrorKind

HTTP_STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.UNSUPPORTED: 501,
    ErrorKind.UNKNOWN: 400,
    ErrorKind.INVALID_ARG: 400,
    ErrorKind.ALREADY_EXISTS: 400,
    ErrorKind.CANCELLED: 400,
}

GRPC_CODE_BY_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.UNKNOWN: grpc.StatusCode.UNKNOWN,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
}


def status_text(protocol: str, kind: ErrorKind | None) -> str:
    """The status a request's client saw, for the request log: `200`/`503` over HTTP, `OK`/
    `UNAVAILABLE` over gRPC (`kind` None: success)."""
    if protocol == "grpc":
        return "OK" if kind is None else GRPC_CODE_BY_KIND[kind].name
    return "200" if kind is None else str(HTTP_STATUS_BY_KIND[kind])
