"""Servicer methods as routes, the context handed to them, the status codes the transport uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor as protobuf_descriptor
from google.protobuf import message_factory

# gRPC status codes used by the transport itself
(
    OK,
    CANCELLED,
    UNKNOWN,
    DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    INTERNAL,
    UNAVAILABLE,
) = 0, 1, 2, 4, 8, 12, 13, 14


@dataclass(frozen=True, slots=True)
class Route:
    """One RPC: the servicer's bound method and the shape of its call."""

    handler: Callable[..., Any]
    request_type: Any
    client_streaming: bool
    server_streaming: bool


def routes_for(
    servicer: object, service: protobuf_descriptor.ServiceDescriptor, base: type
) -> dict[str, Route]:
    """`/package.Service/Method` → Route for every method `servicer` overrides from `base`
    (the generated servicer class); the rest answer UNIMPLEMENTED, as grpcio does."""
    routes = {}
    for method in service.methods:
        implementation = getattr(type(servicer), method.name, None)
        if implementation is None or implementation is getattr(base, method.name, None):
            continue
        routes[f"/{service.full_name}/{method.name}"] = Route(
            getattr(servicer, method.name),
            message_factory.GetMessageClass(method.input_type),
            method.client_streaming,
            method.server_streaming,
        )
    return routes


class AbortError(Exception):
    """Raised by `RpcContext.abort`; the transport turns it into the call's status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class RpcContext:
    """The part of grpc.aio's ServicerContext that servicers use."""

    __slots__ = ("_deadline", "_metadata", "_peer", "code", "details")

    def __init__(
        self, metadata: tuple[tuple[str, str], ...], deadline: float | None, peer: str
    ) -> None:
        self._metadata, self._deadline, self._peer = metadata, deadline, peer
        self.code: int | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise AbortError(code.value[0], details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code.value[0]

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer
