"""KServe v2 gRPC messages <-> core requests and responses (raw_*_contents and typed contents)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from server.errors import ServingError, invalid
from server.protocol.tensors import (
    array_from_bytes,
    array_from_json,
    array_to_bytes,
    check_datatype,
    check_shape,
)
from server.shared_memory import (
    SharedMemoryManager,
    SharedMemoryReference,
    output_destination,
    require_enabled,
    shared_memory_reference,
)
from server.types import InferenceRequest, InferenceResponse, RequestedOutput, datatype_of

# Triton accepts only these `triton_` keys on gRPC requests (TRITON_RESERVED_REQUEST_PARAMS).
ALLOWED_TRITON_PARAMETERS = frozenset({"triton_enable_empty_final_response"})
_CONTENTS_FIELD_BY_DATATYPE = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """The value held by an InferParameter / ModelRepositoryParameter oneof."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def load_parameters(parameters: Any) -> tuple[str | None, dict[str, bytes] | None]:
    """A RepositoryModelLoad's `config` (string_param) and `file:` contents (bytes_param)."""
    config, files = None, {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise invalid(
                    "invalid value type for load parameter 'config', expected string_param."
                )
            config = parameter.string_param
        elif key.startswith("file:"):
            if kind != "bytes_param":
                raise invalid(
                    f"invalid value type for load parameter '{key}', expected bytes_param."
                )
            files[key[len("file:") :]] = parameter.bytes_param
    return config, files or None


# the request parameters Triton reads itself, and the InferParameter choices each may use
_PARAMETER_CHOICES = {
    "sequence_id": ("int64_param", "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
}


def _check_parameter(key: str, parameter: Any) -> None:
    """Refuse a parameter without a value or with the wrong choice, with Triton's message."""
    choices = _PARAMETER_CHOICES.get(key, ("int64_param", "bool_param", "string_param"))
    kind = parameter.WhichOneof("parameter_choice")
    if kind is None or (key in _PARAMETER_CHOICES and kind not in choices):
        expected = (
            choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
        )
        raise invalid(f"invalid value type for '{key}' parameter, expected {expected}.")


def _non_negative(parameter: Any, name: str) -> int:
    value = parameter_value(parameter)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameter '{name}' must be a non-negative integer")
    return value


def _sequence_id(value: Any) -> int | str:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or (isinstance(value, int) and value < 0)
    ):
        raise invalid("parameter 'sequence_id' must be an unsigned integer or a string")
    return value


def decode_request(
    message: pb.ModelInferRequest, shared_memory: SharedMemoryManager | None = None
) -> tuple[InferenceRequest, dict[str, SharedMemoryReference]]:
    """ModelInferRequest -> InferenceRequest, and the outputs to write into client shared memory
    (`shared_memory` None: the extension is off)."""
    parameters: dict[str, Any] = {}
    priority = timeout_us = 0
    sequence: dict[str, Any] = {}
    # iterating an empty protobuf map still goes through collections.abc (~2 % of a request)
    for key, parameter in message.parameters.items() if message.parameters else ():
        if key.startswith("triton_") and key not in ALLOWED_TRITON_PARAMETERS:
            raise invalid(
                f"parameter keys starting with 'triton_' are reserved for Triton usage "
                f"and should not be specified: '{key}'"
            )
        _check_parameter(key, parameter)
        if key == "priority":
            priority = _non_negative(parameter, key)
        elif key == "timeout":
            timeout_us = _non_negative(parameter, key)
        elif key in ("sequence_id", "sequence_start", "sequence_end"):
            sequence[key] = parameter_value(parameter)
        elif not key.startswith("triton_"):
            parameters[key] = parameter_value(parameter)
    inputs = _decode_inputs(message, shared_memory)
    requested = None
    in_shared_memory: dict[str, SharedMemoryReference] = {}
    if message.outputs:
        outputs = []
        for output in message.outputs:
            params = output.parameters
            classification = (
                _non_negative(params["classification"], "classification")
                if "classification" in params
                else 0
            )
            if "shared_memory_region" in params:
                in_shared_memory[output.name] = output_destination(
                    shared_memory,
                    output.name,
                    *_reference_parameters(params, output.name),
                    classification="classification" in params,
                )
            outputs.append(RequestedOutput(output.name, None, classification))
        requested = tuple(outputs)
    request = InferenceRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        inputs=inputs,
        id=message.id,
        requested_outputs=requested,
        parameters=parameters,
        priority=priority,
        timeout_us=timeout_us,
        protocol="grpc",
        sequence_id=_sequence_id(sequence.get("sequence_id", 0)),
        sequence_start=sequence.get("sequence_start") is True,
        sequence_end=sequence.get("sequence_end") is True,
    )
    return request, in_shared_memory


def _decode_inputs(
    message: pb.ModelInferRequest, shared_memory: SharedMemoryManager | None
) -> dict[str, np.ndarray]:
    """raw_input_contents entries are consumed in order by the inputs not in shared memory."""
    raw = message.raw_input_contents
    raw_index = 0
    inputs: dict[str, np.ndarray] = {}
    for tensor in message.inputs:
        name = tensor.name
        if name in inputs:
            raise invalid(f"input '{name}' is given twice")
        shape = check_shape(name, list(tensor.shape))
        datatype = check_datatype(name, tensor.datatype)
        has_contents = tensor.HasField("contents")
        if "shared_memory_region" in tensor.parameters:
            manager = require_enabled(shared_memory)
            if has_contents:
                raise invalid(
                    f"unexpected 'content' provided when using shared memory for "
                    f"input tensor '{name}' for model '{message.model_name}'"
                )
            data = manager.read(
                shared_memory_reference(name, *_reference_parameters(tensor.parameters, name))
            )
            inputs[name] = array_from_bytes(name, data, datatype, shape, model=message.model_name)
        elif raw:
            if has_contents:
                raise invalid("contents field must not be specified when using raw_input_contents")
            if raw_index >= len(raw):
                raise _raw_count_error(message, len(raw))
            inputs[name] = array_from_bytes(
                name, raw[raw_index], datatype, shape, model=message.model_name
            )
            raw_index += 1
        elif has_contents:
            inputs[name] = _from_contents(name, tensor.contents, datatype, shape)
        else:
            raise invalid(f"input '{name}' has no data: use raw_input_contents or contents")
    if raw_index != len(raw):
        raise _raw_count_error(message, len(raw))
    return inputs


def _raw_count_error(message: pb.ModelInferRequest, count: int) -> ServingError:
    expected = sum("shared_memory_region" not in t.parameters for t in message.inputs)
    return invalid(
        f"expected {expected} raw_input_contents entries (one per input not in shared "
        f"memory), got {count}"
    )


def _reference_parameters(params: Any, tensor: str) -> tuple[Any, Any, Any]:
    """A tensor's `shared_memory_*` region, byte size and offset (tritonclient sends int64
    sizes); validated by `shared_memory_reference`. Over gRPC, Triton requires the size."""
    if "shared_memory_byte_size" not in params:
        raise invalid(
            f"'shared_memory_byte_size' must be specified along with "
            f"'shared_memory_region' parameter for tensor '{tensor}'"
        )

    def value(key: str, default: Any) -> Any:
        return parameter_value(params[key]) if key in params else default

    return (
        value("shared_memory_region", None),
        value("shared_memory_byte_size", None),
        value("shared_memory_offset", 0),
    )


def _from_contents(name: str, contents: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    field = _CONTENTS_FIELD_BY_DATATYPE.get(datatype)
    if field is None:
        raise invalid(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    for other, _ in contents.ListFields():
        if other.name != field:  # as Triton: typed data of another datatype is refused
            raise invalid(
                f"unexpected explicit tensor data for input tensor '{name}' in "
                f"'{other.name}', expected datatype '{datatype}' ('{field}')"
            )
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        if array.size != int(np.prod(shape)):
            raise invalid(f"input '{name}': {array.size} elements for shape {list(shape)}")
        return array.reshape(shape)
    return array_from_json(name, values, datatype, shape)


def encode_response(
    response: InferenceResponse,
    in_shared_memory: Mapping[str, SharedMemoryReference] | None = None,
    shared_memory: SharedMemoryManager | None = None,
) -> pb.ModelInferResponse:
    """Every output's data goes to raw_output_contents, index-aligned with `outputs`; an output
    written into client shared memory gets an empty entry and its shared memory parameters."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs.items():
        output = message.outputs.add()
        output.name = name
        output.datatype = datatype_of(array)
        output.shape.extend(array.shape)
        reference = in_shared_memory.get(name) if in_shared_memory else None
        if reference is None or shared_memory is None:
            message.raw_output_contents.append(array_to_bytes(array))
            continue
        blob = array_to_bytes(array)
        shared_memory.write(reference, name, blob)
        output.parameters["shared_memory_region"].string_param = reference.region
        output.parameters["shared_memory_byte_size"].int64_param = len(blob)
        if reference.offset:
            output.parameters["shared_memory_offset"].int64_param = reference.offset
        message.raw_output_contents.append(b"")
    return message
