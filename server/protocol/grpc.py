"""KServe v2 gRPC service (Triton's GRPCInferenceService, from tritonclient's compiled protos) and
the standard gRPC health service; each RPC is one DataPlane call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.byte_budget import LeasePool
from server.connection_moves import ConnectionMover
from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError
from server.protocol import grpc_codec
from server.protocol.grpc_access import RestrictedProtocolInterceptor, guard_routes
from server.protocol.grpc_tls import grpcio_credentials, ssl_context
from server.protocol.grpc_wire.limits import RequestBudget
from server.protocol.grpc_wire.rpc import routes_for
from server.protocol.grpc_wire.server import GrpcWireServer
from server.protocol.grpcio_limits import RequestBudgetInterceptor, grpcio_options
from server.protocol.status import GRPC_CODE_BY_KIND
from server.restrictions import RestrictedApis
from server.settings import GrpcLimits, GrpcTls, GrpcTransport
from server.shared_memory import cuda_register_error
from server.types import InferenceRequest

logger = logging.getLogger(__name__)
# Requests of one ModelStreamInfer call being inferred or waiting to be sent: a client that stops
# reading stops the call from taking more requests (and then flow control stops the client).
STREAM_MAX_IN_FLIGHT = 64
T = TypeVar("T")


async def _call(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
    """Run one RPC body; a ServingError becomes the matching gRPC status."""
    try:
        return await work()
    except ServingError as exc:
        await context.abort(GRPC_CODE_BY_KIND[exc.kind], exc.message)
        raise  # unreachable: abort raises


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """inference.GRPCInferenceService on top of the DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ModelReadyResponse(
                ready=self.dataplane.model_ready(request.name, request.version)
            )

        return await _call(context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            metadata = self.dataplane.model_metadata(request.name, request.version)
            return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

        return await _call(context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ModelConfigResponse(
                config=self.dataplane.model_config(request.name, request.version)
            )

        return await _call(context, work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            stats = await self.dataplane.statistics(request.name, request.version)
            return json_format.ParseDict(
                {"model_stats": stats}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
            )

        return await _call(context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return await self._infer(request, context)

        return await _call(context, work)

    async def _infer(self, request: Any, context: Any) -> Any:
        """Decode, infer, encode one ModelInferRequest (tensors may live in shared memory)."""
        shared_memory = self.dataplane.shared_memory
        if shared_memory is None:
            inference_request, _ = grpc_codec.decode_request(request)
            if self.dataplane.ops.request_context:  # request log or traces
                inference_request = with_context(inference_request, context)
            return grpc_codec.encode_response(await self.dataplane.infer(inference_request))
        with shared_memory.hold():  # the regions it names stay registered until it is done
            inference_request, in_shared_memory = grpc_codec.decode_request(request, shared_memory)
            if self.dataplane.ops.request_context:
                inference_request = with_context(inference_request, context)
            response = await self.dataplane.infer(inference_request)
            return grpc_codec.encode_response(response, in_shared_memory, shared_memory)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently (up to STREAM_MAX_IN_FLIGHT); each gets its
        responses in order (many for a decoupled model), each marked with `triton_final_response`.
        A failed response is an `error_message` in the stream, which stays open."""
        # Both bounds hold a client that stops reading: at most STREAM_MAX_IN_FLIGHT requests run,
        # and their responses wait in a queue of that size (a decoupled model's next response waits
        # for the client to take one).
        responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=STREAM_MAX_IN_FLIGHT)
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)

        async def one(request: Any) -> None:
            try:
                await self._stream_one(request, context, responses.put)
            except ServingError as exc:
                message = pb.ModelStreamInferResponse(error_message=exc.message)
                message.infer_response.id = request.id  # as Triton: which request failed
                await responses.put(message)
            finally:
                slots.release()

        async def read_all() -> None:
            async for request in request_iterator:
                await slots.acquire()
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*list(pending))
            await responses.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (message := await responses.get()) is not None:
                yield message
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _stream_one(
        self, request: Any, context: Any, put: Callable[[Any], Awaitable[None]]
    ) -> None:
        """Every response of one streamed request; a final flag without a response is sent
        (empty) only when the request set triton_enable_empty_final_response."""
        shared_memory = self.dataplane.shared_memory
        parameter = request.parameters.get("triton_enable_empty_final_response")
        empty_final = parameter is not None and parameter.bool_param
        # the regions the request names stay registered until its last response is written
        with shared_memory.hold() if shared_memory is not None else contextlib.nullcontext():
            inference_request, in_shared_memory = grpc_codec.decode_request(request, shared_memory)
            if self.dataplane.ops.request_context:
                inference_request = with_context(inference_request, context)
            async for item in self.dataplane.infer_stream(inference_request):
                message = pb.ModelStreamInferResponse()
                if isinstance(item, ServingError):
                    message.error_message = item.message
                    message.infer_response.id = request.id  # as Triton: which request failed
                elif item.final and not item.outputs and not empty_final:
                    continue
                else:
                    message.infer_response.CopyFrom(
                        grpc_codec.encode_response(item, in_shared_memory, shared_memory)
                    )
                    final = message.infer_response.parameters["triton_final_response"]
                    final.bool_param = item.final
                await put(message)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        rows = self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if request.repository_name:
                raise ServingError(
                    ErrorKind.UNSUPPORTED, "'repository_name' specification is not supported"
                )
            config, files = grpc_codec.load_parameters(request.parameters)
            await self.dataplane.load_model(request.model_name, config, files)
            return pb.RepositoryModelLoadResponse()

        return await _call(context, work)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if request.repository_name:
                raise ServingError(
                    ErrorKind.UNSUPPORTED, "'repository_name' specification is not supported"
                )
            await self.dataplane.unload_model(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await _call(context, work)

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            response = pb.SystemSharedMemoryStatusResponse()
            for region in await self.dataplane.shared_memory_status(request.name):
                response.regions[region["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await _call(context, work)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            await self.dataplane.register_shared_memory(
                request.name, request.key, request.offset, request.byte_size
            )
            return pb.SystemSharedMemoryRegisterResponse()

        return await _call(context, work)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            await self.dataplane.unregister_shared_memory(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

        return await _call(context, work)

    async def LogSettings(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            changes = {
                key: grpc_codec.parameter_value(value) for key, value in request.settings.items()
            }
            if "log_file" in request.settings:  # Triton refuses it whatever its value
                changes["log_file"] = changes["log_file"] or ""
            settings = (
                await self.dataplane.update_log_settings(changes)
                if changes
                else self.dataplane.log_settings()
            )
            response = pb.LogSettingsResponse()
            for key, value in settings.items():
                field = (
                    "bool_param"
                    if isinstance(value, bool)
                    else "uint32_param"
                    if isinstance(value, int)
                    else "string_param"
                )
                setattr(response.settings[key], field, value)
            return response

        return await _call(context, work)

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            changes = {key: list(value.value) for key, value in request.settings.items()}
            settings = (
                await self.dataplane.update_trace_settings(request.model_name, changes)
                if changes
                else self.dataplane.trace_settings(request.model_name)
            )
            response = pb.TraceSettingResponse()
            for key, value in settings.items():
                response.settings[key].value.extend(value if isinstance(value, list) else [value])
            return response

        return await _call(context, work)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        if request.name:  # nothing is ever registered
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Unable to find cuda shared memory region: '{request.name}'",
            )
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            raise cuda_register_error(self.dataplane.shared_memory, request.name)

        return await _call(context, work)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()


def with_context(request: InferenceRequest, context: Any) -> InferenceRequest:
    """The request with who asked and in which trace (for the request log and traces)."""
    return dataclasses.replace(
        request,
        client=client_address(context.peer()),
        traceparent=metadata_value(context.invocation_metadata(), "traceparent"),
    )


def client_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` (gRPC's peer string) as `127.0.0.1:5000`."""
    kind, _, address = peer.partition(":")
    return address if kind in ("ipv4", "ipv6") else peer


def metadata_value(metadata: Any, key: str) -> str:
    """A call's metadata value for `key` ('' when absent)."""
    for name, value in metadata or ():
        if name == key:
            return str(value)
    return ""


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1.Health: SERVING while the server is ready."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def Check(self, request: Any, context: Any) -> Any:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.dataplane.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=status)


_SERVICES = (
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)


def create_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    transport: GrpcTransport = GrpcTransport.FERRY,
    limits: GrpcLimits | None = None,
    *,
    restricted: RestrictedApis | None = None,
    tls: GrpcTls | None = None,
    reuse_port: bool = False,
    mover: ConnectionMover | None = None,
    budget_pool: LeasePool | None = None,
    connection_pool: LeasePool | None = None,
) -> GrpcServer:
    """Both services on the chosen transport with `limits`, bound to host:port once started; the
    restricted API groups (`--grpc-restricted-protocol`) behind their metadata keys; TLS when
    given; connections moved to their models' owner by `mover` (ferry's transport only); under
    `--workers N`, the buffered request bytes leased from the workers' `budget_pool`, and on
    ferry's transport each connection from their `connection_pool` (`--grpc-max-connections`)."""
    limits = limits or GrpcLimits()
    if transport == GrpcTransport.GRPCIO:
        return cast(
            GrpcServer,
            create_grpcio_server(
                dataplane,
                f"{host}:{port}",
                limits,
                restricted=restricted,
                tls=tls,
                reuse_port=reuse_port,
                budget_pool=budget_pool,
            ),
        )
    routes = routes_for(
        InferenceServicer(dataplane), _SERVICES[0], service_pb2_grpc.GRPCInferenceServiceServicer
    )
    routes.update(
        routes_for(HealthServicer(dataplane), _SERVICES[1], health_pb2_grpc.HealthServicer)
    )
    if restricted:
        routes = guard_routes(routes, restricted, _SERVICES)
    return GrpcWireServer(
        routes,
        host,
        port,
        limits,
        ssl_context(tls) if tls is not None else None,
        reuse_port,
        mover,
        budget_pool,
        connection_pool,
    )


class GrpcServer(Protocol):
    """What app.py needs from either transport."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


_UNPARSED = object()  # a request message that did not parse


class ParseErrorsAsInternal(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A unary request that does not parse is INTERNAL "Unable to parse request", as Triton and
    ferry's own transport answer (grpc.aio would say UNKNOWN)."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return _UNPARSED

        async def run(request: Any, context: Any) -> Any:
            if request is _UNPARSED:
                await context.abort(grpc.StatusCode.INTERNAL, "Unable to parse request")
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )


def create_grpcio_server(
    dataplane: DataPlane,
    address: str,
    limits: GrpcLimits,
    *,
    restricted: RestrictedApis | None = None,
    tls: GrpcTls | None = None,
    reuse_port: bool = False,
    budget_pool: LeasePool | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server with both services and `limits`, bound to `address`."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if restricted:
        interceptors.append(RestrictedProtocolInterceptor(restricted, _SERVICES))
    interceptors.append(
        RequestBudgetInterceptor(RequestBudget(limits.max_buffered_request_bytes, budget_pool))
    )
    interceptors.append(ParseErrorsAsInternal())
    server = grpc.aio.server(options=grpcio_options(limits, reuse_port), interceptors=interceptors)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(dataplane), server)
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, grpcio_credentials(tls))
    if bound == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    return server
