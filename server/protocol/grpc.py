"""KServe v2 gRPC service (Triton's GRPCInferenceService, from tritonclient's compiled protos) and
the standard gRPC health service; each RPC is one DataPlane call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from server.dataplane import DataPlane
from server.errors import ErrorKind, ServingError
from server.protocol import grpc_codec
from server.protocol.grpc_access import RestrictedProtocolInterceptor, guard_routes
from server.protocol.grpc_tls import grpcio_credentials, ssl_context
from server.protocol.grpc_wire.rpc import routes_for
from server.protocol.grpc_wire.server import GrpcWireServer
from server.protocol.status import GRPC_CODE_BY_KIND
from server.restrictions import RestrictedApis
from server.settings import GrpcTls, GrpcTransport

logger = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 2**31 - 1
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
            stats = self.dataplane.statistics(request.name, request.version)
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
        inference_request, in_shared_memory = grpc_codec.decode_request(request, shared_memory)
        if self.dataplane.ops.request_context:  # request log or traces
            inference_request = dataclasses.replace(
                inference_request,
                client=client_address(context.peer()),
                traceparent=metadata_value(context.invocation_metadata(), "traceparent"),
            )
        response = await self.dataplane.infer(inference_request)
        return grpc_codec.encode_response(response, in_shared_memory, shared_memory)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently; each response is final."""
        responses: asyncio.Queue[Any] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            message = pb.ModelStreamInferResponse()
            try:
                message.infer_response.CopyFrom(await self._infer(request, context))
                message.infer_response.parameters["triton_final_response"].bool_param = True
            except ServingError as exc:
                message.error_message = exc.message
            await responses.put(message)

        async def read_all() -> None:
            async for request in request_iterator:
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
            config, files = None, {}
            for key, parameter in request.parameters.items():
                if key == "config":
                    config = grpc_codec.parameter_value(parameter)
                elif key.startswith("file:"):
                    files[key[len("file:") :]] = grpc_codec.parameter_value(parameter)
            await self.dataplane.load_model(request.model_name, config, files or None)
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
            shared_memory = self.dataplane.shared_memory
            for region in shared_memory.status(request.name) if shared_memory else ():
                response.regions[region["name"]].CopyFrom(
                    pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await _call(context, work)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            shared_memory = self.dataplane.shared_memory
            if shared_memory is None:
                raise ServingError(
                    ErrorKind.UNSUPPORTED,
                    "client shared memory is not enabled on this server (start "
                    "ferry serve with --allow-client-shm)",
                )
            shared_memory.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

        return await _call(context, work)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        if self.dataplane.shared_memory is not None:  # else nothing is ever registered
            self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def LogSettings(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            changes = {
                key: grpc_codec.parameter_value(value) for key, value in request.settings.items()
            }
            if "log_file" in request.settings:  # Triton refuses it whatever its value
                changes["log_file"] = changes["log_file"] or ""
            settings = (
                self.dataplane.update_log_settings(changes)
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
                self.dataplane.update_trace_settings(request.model_name, changes)
                if changes
                else self.dataplane.trace_settings(request.model_name)
            )
            response = pb.TraceSettingResponse()
            for key, value in settings.items():
                response.settings[key].value.extend(value if isinstance(value, list) else [value])
            return response

        return await _call(context, work)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "CUDA shared memory is not enabled on this server"
        )

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()


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
    *,
    restricted: RestrictedApis | None = None,
    tls: GrpcTls | None = None,
) -> GrpcServer:
    """Both services on the chosen transport, bound to host:port once started; the restricted
    API groups (`--grpc-restricted-protocol`) behind their metadata keys; TLS when given."""
    if transport == GrpcTransport.GRPCIO:
        return cast(
            GrpcServer,
            create_grpcio_server(dataplane, f"{host}:{port}", restricted=restricted, tls=tls),
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
        routes, host, port, MAX_MESSAGE_BYTES, ssl_context(tls) if tls is not None else None
    )


class GrpcServer(Protocol):
    """What app.py needs from either transport."""

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


def create_grpcio_server(
    dataplane: DataPlane,
    address: str,
    *,
    restricted: RestrictedApis | None = None,
    tls: GrpcTls | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server with both services and 2 GiB-1 message limits, bound to `address`."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    interceptors = [RestrictedProtocolInterceptor(restricted, _SERVICES)] if restricted else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
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
