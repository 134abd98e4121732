"""What `ferry bench` learns from the server before loading it: metadata, config, statistics.

Read over the protocol being measured (HTTP JSON or gRPC protobuf), as perf_analyzer does, so a
server that speaks only one of them can be measured. The config is optional: MLServer and KServe
answer metadata only; then a model whose inputs all lead with -1 is taken as batching.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from measure.grpc_client import GrpcExchange
from measure.http_client import HttpExchange


class BenchError(Exception):
    """A problem `ferry bench` reports as one line and exit code 2."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as the server describes it; `dims` exclude the batch dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """The facts of a model that shape the requests and the report."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int  # 0: no batch dim; -1: batches, limit unknown (no config)
    sequence: bool
    decoupled: bool
    has_config: bool


class ModelSource(Protocol):
    """Reads a model's metadata, config and statistics over one protocol."""

    async def metadata(self, name: str, version: str) -> dict[str, Any]: ...
    async def config(self, name: str, version: str) -> dict[str, Any] | None: ...
    async def statistics(self, name: str, version: str) -> dict[str, Any] | None: ...
    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]: ...
    def close(self) -> None: ...


def _model_path(name: str, version: str) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


class HttpModelSource:
    """KServe v2 REST: `/v2/models/NAME[/versions/V][/config|/stats]`."""

    def __init__(self, host: str, port: int) -> None:
        self.exchange = HttpExchange(host, port)

    async def _get(self, path: str) -> tuple[int, Any]:
        status, body = await self.exchange.request("GET", path)
        if status == 0:
            raise BenchError(f"cannot reach the server: {body.decode(errors='replace')}")
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    async def metadata(self, name: str, version: str) -> dict[str, Any]:
        status, body = await self._get(_model_path(name, version))
        if status != 200 or not isinstance(body, dict):
            detail = body.get("error") if isinstance(body, dict) else body
            raise BenchError(f"model metadata for '{name}': HTTP {status}: {detail}")
        return body

    async def config(self, name: str, version: str) -> dict[str, Any] | None:
        status, body = await self._get(_model_path(name, version) + "/config")
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get("config", body) if "config" in body and len(body) == 1 else body

    async def statistics(self, name: str, version: str) -> dict[str, Any] | None:
        status, body = await self._get(_model_path(name, version) + "/stats")
        if status != 200 or not isinstance(body, dict):
            return None
        return body

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        return await self.exchange.request(
            "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )

    def close(self) -> None:
        self.exchange.close()


class GrpcModelSource:
    """KServe v2 gRPC (`inference.GRPCInferenceService`), answers turned into Triton's JSON."""

    def __init__(self, host: str, port: int) -> None:
        self.exchange = GrpcExchange(host, port)

    async def _call(self, method: str, request: Any, response_type: Any) -> tuple[int, Any]:
        from google.protobuf import json_format

        try:
            status, body = await self.exchange.call(method, request.SerializeToString())
        except (OSError, TimeoutError) as exc:
            raise BenchError(f"cannot reach the server: {exc}") from exc
        if status != 0:
            return status, body.decode(errors="replace")
        message = response_type.FromString(body)
        return 0, json_format.MessageToDict(message, preserving_proto_field_name=True)

    async def metadata(self, name: str, version: str) -> dict[str, Any]:
        from tritonclient.grpc import service_pb2 as pb

        status, body = await self._call(
            "ModelMetadata",
            pb.ModelMetadataRequest(name=name, version=version),
            pb.ModelMetadataResponse,
        )
        if status != 0:
            raise BenchError(f"model metadata for '{name}': gRPC status {status}: {body}")
        for tensor in (*body.get("inputs", []), *body.get("outputs", [])):
            tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
        return dict(body)

    async def config(self, name: str, version: str) -> dict[str, Any] | None:
        from tritonclient.grpc import service_pb2 as pb

        status, body = await self._call(
            "ModelConfig", pb.ModelConfigRequest(name=name, version=version), pb.ModelConfigResponse
        )
        return dict(body.get("config", {})) if status == 0 else None

    async def statistics(self, name: str, version: str) -> dict[str, Any] | None:
        from tritonclient.grpc import service_pb2 as pb

        status, body = await self._call(
            "ModelStatistics",
            pb.ModelStatisticsRequest(name=name, version=version),
            pb.ModelStatisticsResponse,
        )
        return dict(body) if status == 0 else None

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        raise NotImplementedError  # shared memory registration over gRPC uses `call` directly

    def close(self) -> None:
        self.exchange.close()


def _dims(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value or ())


def parse_model(
    name: str, metadata: Mapping[str, Any], config: Mapping[str, Any] | None, version: str = ""
) -> ModelInfo:
    """Combine metadata (datatypes, shapes) and config (batching, sequences, optional inputs)."""
    if config is not None:
        max_batch = int(config.get("max_batch_size", 0) or 0)
    else:
        declared = list(metadata.get("inputs", []))
        batching = bool(declared) and all(
            t.get("shape") and int(t["shape"][0]) == -1 for t in declared
        )
        max_batch = -1 if batching else 0
    optional = {
        str(item.get("name")) for item in (config or {}).get("input", []) if item.get("optional")
    }
    config_dims = {
        str(item.get("name")): _dims(item.get("dims"))
        for item in (config or {}).get("input", []) + (config or {}).get("output", [])
    }

    def described(key: str) -> tuple[TensorInfo, ...]:
        found = []
        for item in metadata.get(key, []):
            tensor_name = str(item["name"])
            shape = _dims(item.get("shape"))
            dims = shape[1:] if max_batch != 0 and shape else shape
            dims = config_dims.get(tensor_name, dims) if config is not None else dims
            found.append(
                TensorInfo(tensor_name, str(item["datatype"]), dims, tensor_name in optional)
            )
        return tuple(found)

    policy = (config or {}).get("model_transaction_policy", {})
    return ModelInfo(
        name=name,
        version=version,
        platform=str(metadata.get("platform", "")),
        inputs=described("inputs"),
        outputs=described("outputs"),
        max_batch_size=max_batch,
        sequence="sequence_batching" in (config or {}),
        decoupled=bool(policy.get("decoupled", False)),
        has_config=config is not None,
    )
