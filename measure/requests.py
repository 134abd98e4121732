"""Inference requests encoded once: HTTP (binary tensor extension or JSON) or gRPC messages.

A `RequestSet` hands the load loop ready-to-write bytes. Sequence models need a sequence id and
start/end flags on each request: those are added per request (JSON header or a protobuf map entry
appended to the pre-serialized message, which protobuf merges), everything else stays encoded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from measure.grpc_client import call_headers, grpc_message
from measure.http_client import encode_request
from measure.inputs import InputSet
from measure.model_info import ModelInfo


@dataclass(frozen=True)
class SharedMemoryRefs:
    """Where each input of each distinct request lies, and the output regions, if shm is used."""

    inputs: tuple[
        dict[str, tuple[str, int, int]], ...
    ]  # per request: name -> (region, offset, size)
    outputs: dict[str, tuple[str, int]]  # name -> (region, byte size)


@dataclass(frozen=True)
class Sequence:
    """A sequence request's control values."""

    sequence_id: int
    start: bool
    end: bool


def _tensor_bytes(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        return b"".join(
            len(item).to_bytes(4, "little") + item
            for item in (v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
        )
    return np.ascontiguousarray(array).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    if array.dtype == np.object_:
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.flat]
    return list(array.reshape(-1).tolist())


class RequestSet:
    """Pre-encoded requests for one model, protocol and tensor encoding."""

    def __init__(
        self,
        model: ModelInfo,
        inputs: InputSet,
        protocol: str,
        binary: bool,
        authority: str,
        shared_memory: SharedMemoryRefs | None = None,
    ) -> None:
        self.model, self.inputs, self.protocol = model, inputs, protocol
        self.binary, self.authority, self.shared_memory = binary, authority, shared_memory
        suffix = f"/versions/{model.version}" if model.version else ""
        self.http_path = f"/v2/models/{model.name}{suffix}/infer"
        self.grpc_headers = call_headers("/inference.GRPCInferenceService/ModelInfer", authority)
        self._fixed = [self._encode(index, None) for index in range(len(inputs.requests))]

    def __len__(self) -> int:
        return len(self._fixed)

    def payload(self, index: int, sequence: Sequence | None = None) -> bytes:
        """The bytes to write for distinct request `index` (HTTP request or gRPC message)."""
        if sequence is None:
            return self._fixed[index]
        return self._encode(index, sequence)

    def _encode(self, index: int, sequence: Sequence | None) -> bytes:
        if self.protocol == "grpc":
            return grpc_message(self._grpc(index, sequence))
        return self._http(index, sequence)

    def _parameters(self, sequence: Sequence | None) -> dict[str, Any]:
        if sequence is None:
            return {}
        return {
            "sequence_id": sequence.sequence_id,
            "sequence_start": sequence.start,
            "sequence_end": sequence.end,
        }

    def _http(self, index: int, sequence: Sequence | None) -> bytes:
        tensors = self.inputs.requests[index]
        refs = self.shared_memory.inputs[index] if self.shared_memory else None
        header_inputs, blobs = [], []
        for name, array in tensors.items():
            entry: dict[str, Any] = {
                "name": name,
                "shape": list(array.shape),
                "datatype": self._datatype(name),
            }
            if refs is not None:
                region, offset, size = refs[name]
                entry["parameters"] = {
                    "shared_memory_region": region,
                    "shared_memory_offset": offset,
                    "shared_memory_byte_size": size,
                }
            elif self.binary:
                blob = _tensor_bytes(array)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = _json_data(array)
            header_inputs.append(entry)
        header: dict[str, Any] = {"inputs": header_inputs}
        parameters = self._parameters(sequence)
        if self.shared_memory is not None:
            header["outputs"] = [
                {
                    "name": name,
                    "parameters": {"shared_memory_region": region, "shared_memory_byte_size": size},
                }
                for name, (region, size) in self.shared_memory.outputs.items()
            ]
        elif self.binary:
            parameters["binary_data_output"] = True
        if parameters:
            header["parameters"] = parameters
        head = json.dumps(header, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if blobs:
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(head)),
            }
        return encode_request(
            "POST", self.http_path, self.authority, headers, head + b"".join(blobs)
        )

    def _datatype(self, name: str) -> str:
        return next(t.datatype for t in self.model.inputs if t.name == name)

    def _grpc(self, index: int, sequence: Sequence | None) -> bytes:
        from tritonclient.grpc import service_pb2 as pb

        message = pb.ModelInferRequest(model_name=self.model.name, model_version=self.model.version)
        refs = self.shared_memory.inputs[index] if self.shared_memory else None
        for name, array in self.inputs.requests[index].items():
            tensor = message.inputs.add(name=name, datatype=self._datatype(name))
            tensor.shape.extend(array.shape)
            if refs is not None:
                region, offset, size = refs[name]
                tensor.parameters["shared_memory_region"].string_param = region
                tensor.parameters["shared_memory_offset"].int64_param = offset
                tensor.parameters["shared_memory_byte_size"].int64_param = size
            else:
                message.raw_input_contents.append(_tensor_bytes(array))
        if self.shared_memory is not None:
            for name, (region, size) in self.shared_memory.outputs.items():
                output = message.outputs.add(name=name)
                output.parameters["shared_memory_region"].string_param = region
                output.parameters["shared_memory_byte_size"].int64_param = size
        if sequence is not None:
            message.parameters["sequence_id"].int64_param = sequence.sequence_id
            message.parameters["sequence_start"].bool_param = sequence.start
            message.parameters["sequence_end"].bool_param = sequence.end
        return bytes(message.SerializeToString())


def tensor_bytes(tensors: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Raw bytes of each tensor as the server reads them (BYTES length-prefixed)."""
    return {name: _tensor_bytes(array) for name, array in tensors.items()}
