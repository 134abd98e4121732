"""`--grpc-restricted-protocol` on both gRPC transports: each RPC's API group (Triton's), and a
call without the right `triton-grpc-protocol-<key>` metadata refused with UNAVAILABLE and
Triton's message. Only the restricted methods are wrapped, so open ones cost nothing.

ferry's transport gets guarded routes (`guard_routes`); grpc.aio gets a server interceptor
(`RestrictedProtocolInterceptor`). Both also refuse restricted methods ferry does not implement
(trace, logging), as Triton does, before answering UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor as protobuf_descriptor
from google.protobuf import message_factory

from server.protocol.grpc_wire.rpc import Route
from server.restrictions import RestrictedApis, Restriction, refusal_message

_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
# Triton's API group of every RPC (src/grpc/grpc_server.cc, the Register* handlers)
GROUP_BY_METHOD: dict[str, str] = {
    **{
        _INFERENCE_SERVICE + name: group
        for group, names in (
            ("health", ("ServerLive", "ServerReady", "ModelReady")),
            ("metadata", ("ServerMetadata", "ModelMetadata")),
            ("inference", ("ModelInfer", "ModelStreamInfer")),
            ("model-config", ("ModelConfig",)),
            ("statistics", ("ModelStatistics",)),
            ("trace", ("TraceSetting",)),
            ("logging", ("LogSettings",)),
            (
                "shared-memory",
                (
                    "SystemSharedMemoryStatus",
                    "SystemSharedMemoryRegister",
                    "SystemSharedMemoryUnregister",
                    "CudaSharedMemoryStatus",
                    "CudaSharedMemoryRegister",
                    "CudaSharedMemoryUnregister",
                ),
            ),
            (
                "model-repository",
                ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
            ),
        )
        for name in names
    },
    "/grpc.health.v1.Health/Check": "health",
    "/grpc.health.v1.Health/Watch": "health",
}


class _Gate:
    """One restricted method: the metadata key it needs and the refusal."""

    __slots__ = ("key", "message", "restriction")

    def __init__(self, restriction: Restriction) -> None:
        self.restriction = restriction
        self.key = restriction.header.lower()  # gRPC metadata keys are lower case
        self.message = refusal_message(restriction, "protocol")

    def admits(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        for key, value in metadata:
            if key == self.key:
                return self.restriction.admits(value)
        return False

    async def refuse(self, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.message)


def _gates(restricted: RestrictedApis) -> dict[str, _Gate]:
    """method path -> gate, for the methods of the restricted groups."""
    return {
        method: _Gate(restricted[group])
        for method, group in GROUP_BY_METHOD.items()
        if group in restricted
    }


def guard_routes(
    routes: dict[str, Route],
    restricted: RestrictedApis,
    services: Sequence[protobuf_descriptor.ServiceDescriptor],
) -> dict[str, Route]:
    """`routes` with every restricted method behind its gate (ferry's transport)."""
    guarded = dict(routes)
    methods = {
        f"/{service.full_name}/{method.name}": method
        for service in services
        for method in service.methods
    }
    for path, gate in _gates(restricted).items():
        route = routes.get(path)
        if route is None:  # not implemented: refused first, like Triton, then UNIMPLEMENTED
            method = methods.get(path)
            if method is None:
                continue
            route = Route(
                _unimplemented(path, method.server_streaming),
                message_factory.GetMessageClass(method.input_type),
                method.client_streaming,
                method.server_streaming,
            )
        guarded[path] = _guarded(route, gate)
    return guarded


def _unimplemented(path: str, server_streaming: bool) -> Callable[..., Any]:
    async def unary(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
        yield  # pragma: no cover - abort raises

    return stream if server_streaming else unary


def _guarded(route: Route, gate: _Gate) -> Route:
    handler = route.handler

    async def unary(request: Any, context: Any) -> Any:
        if not gate.admits(context.invocation_metadata()):
            await gate.refuse(context)
        return await handler(request, context)

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        if not gate.admits(context.invocation_metadata()):
            await gate.refuse(context)
        async for response in handler(request, context):
            yield response

    return Route(
        stream if route.server_streaming else unary,
        route.request_type,
        route.client_streaming,
        route.server_streaming,
    )


class RestrictedProtocolInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """grpc.aio: a call to a restricted method without its key gets UNAVAILABLE."""

    def __init__(
        self,
        restricted: RestrictedApis,
        services: Sequence[protobuf_descriptor.ServiceDescriptor],
    ) -> None:
        shapes = {
            f"/{service.full_name}/{method.name}": (
                method.client_streaming,
                method.server_streaming,
            )
            for service in services
            for method in service.methods
        }
        self._refusals = {
            path: (gate, _refusal_handler(gate, *shapes.get(path, (False, False))))
            for path, gate in _gates(restricted).items()
        }

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        entry = self._refusals.get(handler_call_details.method)
        if entry is None or entry[0].admits(handler_call_details.invocation_metadata or ()):
            return await continuation(handler_call_details)
        return entry[1]


def _refusal_handler(gate: _Gate, client_streaming: bool, server_streaming: bool) -> Any:
    """A method handler of the call's shape that only refuses."""

    async def refuse(request: Any, context: Any) -> None:
        await gate.refuse(context)

    if client_streaming and server_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if client_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if server_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
