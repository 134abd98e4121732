"""KServe v2 gRPC messages <-> core requests and responses (raw_*_contents and typed contents)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from server.errors import ErrorKind, ServingError, invalid
from server.protocol.tensors import (
    array_from_bytes,
    array_from_json,
    array_to_bytes,
    check_datatype,
    check_shape,
)
from server.types import InferenceRequest, InferenceResponse, RequestedOutput, datatype_of

# Triton accepts only these `triton_` keys on gRPC requests (TRITON_RESERVED_REQUEST_PARAMS).
ALLOWED_TRITON_PARAMETERS = frozenset({"triton_enable_empty_final_response"})
_CONTENTS_FIELD_BY_DATATYPE = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """The value held by an InferParameter / ModelRepositoryParameter oneof."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _non_negative(parameter: Any, name: str) -> int:
    value = parameter_value(parameter)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameter '{name}' must be a non-negative integer")
    return value


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """ModelInferRequest -> InferenceRequest."""
    parameters: dict[str, Any] = {}
    priority = timeout_us = 0
    # iterating an empty protobuf map still goes through collections.abc (~2 % of a request)
    for key, parameter in message.parameters.items() if message.parameters else ():
        if key.startswith("triton_") and key not in ALLOWED_TRITON_PARAMETERS:
            raise invalid(f"parameter keys starting with 'triton_' are reserved for Triton usage "
                          f"and should not be specified: '{key}'")
        if key == "priority":
            priority = _non_negative(parameter, key)
        elif key == "timeout":
            timeout_us = _non_negative(parameter, key)
        elif not key.startswith("triton_") and key not in ("sequence_id", "sequence_start",
                                                           "sequence_end"):
            parameters[key] = parameter_value(parameter)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise invalid(f"expected {len(message.inputs)} raw_input_contents entries (one per input), "
                      f"got {len(raw)}")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise invalid(f"input '{name}' is given twice")
        if "shared_memory_region" in tensor.parameters:
            raise ServingError(ErrorKind.UNSUPPORTED, "client shared memory is not enabled on "
                                                       "this server")
        shape = check_shape(name, list(tensor.shape))
        datatype = check_datatype(name, tensor.datatype)
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise invalid("contents field must not be specified when using "
                              "raw_input_contents")
            inputs[name] = array_from_bytes(name, raw[index], datatype, shape)
        elif has_contents:
            inputs[name] = _from_contents(name, tensor.contents, datatype, shape)
        else:
            raise invalid(f"input '{name}' has no data: use raw_input_contents or contents")
    requested = None
    if message.outputs:
        requested = tuple(
            RequestedOutput(output.name, None, _non_negative(output.parameters["classification"],
                                                             "classification")
                            if "classification" in output.parameters else 0)
            for output in message.outputs)
    return InferenceRequest(
        model_name=message.model_name, model_version=message.model_version,
        inputs=inputs, id=message.id, requested_outputs=requested, parameters=parameters,
        priority=priority, timeout_us=timeout_us, protocol="grpc")


def _from_contents(name: str, contents: Any, datatype: str,
                   shape: tuple[int, ...]) -> np.ndarray:
    field = _CONTENTS_FIELD_BY_DATATYPE.get(datatype)
    if field is None:
        raise invalid(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        if array.size != int(np.prod(shape)):
            raise invalid(f"input '{name}': {array.size} elements for shape {list(shape)}")
        return array.reshape(shape)
    return array_from_json(name, values, datatype, shape)


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """Every output's data goes to raw_output_contents, index-aligned with `outputs`."""
    message = pb.ModelInferResponse(model_name=response.model_name,
                                    model_version=response.model_version, id=response.id)
    for name, array in response.outputs.items():
        output = message.outputs.add()
        output.name = name
        output.datatype = datatype_of(array)
        output.shape.extend(array.shape)
        message.raw_output_contents.append(array_to_bytes(array))
    return message
