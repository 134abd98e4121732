"""The gRPC limits on the grpc.aio transport: grpc core's channel arguments where it has one, and
the server-wide request budget through an interceptor (charged once grpc core has received a
message, while its handler holds it: grpc core buffers each message before Python sees it, so
there the budget cannot stop the receiving itself, only the messages piling up behind it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.protocol.grpc_wire.limits import RequestBudget
from server.settings import GrpcLimits


def grpcio_options(limits: GrpcLimits) -> list[tuple[str, int]]:
    """grpc core channel arguments for `limits` (the same flags as ferry's own transport)."""
    options = [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_receivable_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.max_metadata_size", limits.max_header_list_bytes),
        ("grpc.absolute_max_metadata_size", 2 * limits.max_header_list_bytes),
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        ("grpc.keepalive_time_ms", limits.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", limits.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(limits.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", limits.http2_max_pings_without_data),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            limits.http2_min_recv_ping_interval_without_data_ms,
        ),
        ("grpc.http2.max_ping_strikes", limits.http2_max_ping_strikes),
        ("grpc.so_reuseport", 0),
    ]
    if limits.max_connection_idle_ms:
        options.append(("grpc.max_connection_idle_ms", limits.max_connection_idle_ms))
    if limits.max_connection_age_ms is not None:
        options.append(("grpc.max_connection_age_ms", limits.max_connection_age_ms))
    if limits.max_connection_age_grace_ms is not None:
        options.append(("grpc.max_connection_age_grace_ms", limits.max_connection_age_grace_ms))
    return options


class _Charged:
    """A request message and the budget bytes it holds, given back when it is dropped."""

    __slots__ = ("budget", "message", "size")

    def __init__(self, budget: RequestBudget, message: Any, size: int) -> None:
        self.budget, self.message, self.size = budget, message, size

    def __del__(self) -> None:
        if self.size > 0:
            self.budget.release(self.size)


class RequestBudgetInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Charges each request message's bytes to the server-wide budget while it is held; a message
    over the budget gets RESOURCE_EXHAUSTED."""

    def __init__(self, budget: RequestBudget) -> None:
        self.budget = budget

    def _deserializer(self, handler: Any) -> Callable[[bytes], _Charged]:
        deserialize = handler.request_deserializer

        def charged(data: bytes) -> _Charged:
            size = len(data)
            if not self.budget.try_charge(size):
                return _Charged(self.budget, None, -1)
            return _Charged(self.budget, deserialize(data) if deserialize else data, size)

        return charged

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        budget = self.budget
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_behavior(request: _Charged, context: Any) -> Any:
                if request.size < 0:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, budget.exhausted_message()
                    )
                return await unary(request.message, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=self._deserializer(handler),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            streaming = handler.stream_stream

            async def stream_behavior(requests: Any, context: Any) -> AsyncIterator[Any]:
                async def messages() -> AsyncIterator[Any]:
                    async for request in requests:
                        if request.size < 0:  # end the requests; the call ends with this status
                            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                            context.set_details(budget.exhausted_message())
                            return
                        yield request.message

                async for response in streaming(messages(), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=self._deserializer(handler),
                response_serializer=handler.response_serializer,
            )
        return handler
