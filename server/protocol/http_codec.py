"""KServe v2 HTTP infer bodies: JSON, and JSON + binary tensor data (Triton's extension)."""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from server.errors import ServingError, invalid
from server.protocol.http_limits import DecodeLimits, check_json_size
from server.protocol.tensors import (
    WIRE_DTYPE_BY_DATATYPE,
    array_from_bytes,
    array_from_json,
    array_to_bytes,
    array_to_json,
    check_datatype,
    check_shape,
    checked_count,
)
from server.shared_memory import (
    SharedMemoryManager,
    SharedMemoryReference,
    output_destination,
    require_enabled,
    shared_memory_reference,
)
from server.types import (
    ELEMENT_SIZE_BY_DATATYPE,
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    datatype_of,
)

RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
    }
)


DEFAULT_DECODE_LIMITS = DecodeLimits()


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class OutputEncoding:
    """How the response's outputs go on the wire."""

    binary_default: bool
    binary_by_output: Mapping[str, bool | None]
    # outputs the client asked to have written into its shared memory regions
    shared_memory_by_output: Mapping[str, SharedMemoryReference] = field(default_factory=dict)


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """Inference-Header-Content-Length: None (all JSON), or the JSON part's length."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise invalid(f"invalid Inference-Header-Content-Length '{value}'") from None
    if length < 0 or length > body_length:
        raise invalid(f"inference header size should be in range (0, {body_length}), got: {length}")
    return length


def decode_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str,
    shared_memory: SharedMemoryManager | None = None,
    limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
) -> tuple[InferenceRequest, OutputEncoding]:
    """Decode an infer body into an InferenceRequest and the requested output encoding; tensors
    in client shared memory need `shared_memory` (None: the extension is off). Sizes and counts
    are checked against `limits` before they are decoded."""
    json_end = len(body) if header_length is None else header_length
    if json_end > limits.json_bytes_always_within:  # (the hot path skips the call)
        check_json_size(body, json_end, limits)
    header_bytes = None
    if header_length is not None and json_end <= PLANNED_HEADER_MAX_BYTES and type(body) is bytes:
        header_bytes = body[:json_end]
        plan = _header_plans.get(header_bytes)
        if plan is not None:
            request = plan.request(body, json_end, model_name, model_version, limits)
            if request is not None:
                return request, plan.encoding
    header = parse_json(memoryview(body)[:json_end])
    if not isinstance(header, dict):
        raise invalid("the request JSON must be an object")
    parameters = header.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise invalid("request 'parameters' must be an object")
    for key, value in parameters.items():
        _check_parameter(key, value)
    inputs = _decode_inputs(header.get("inputs"), body, json_end, shared_memory, limits, model_name)
    requested, binary_by_output, in_shared_memory = _decode_outputs(
        header.get("outputs"), shared_memory
    )
    priority = _unsigned(parameters.get("priority", 0), "priority")
    timeout_us = _unsigned(parameters.get("timeout", 0), "timeout")
    sequence_id = parameters.get("sequence_id", 0)  # its JSON type checked above
    if isinstance(sequence_id, int) and sequence_id < 0:
        raise invalid("parameter 'sequence_id' must be an unsigned integer or a string")
    custom = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("request 'id' must be a string")
    request = InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=request_id,
        requested_outputs=requested,
        parameters=custom,
        priority=priority,
        timeout_us=timeout_us,
        protocol="http",
        sequence_id=sequence_id,
        sequence_start=parameters.get("sequence_start") is True,
        sequence_end=parameters.get("sequence_end") is True,
    )
    binary_default = parameters.get("binary_data_output", False) is True
    encoding = OutputEncoding(binary_default, binary_by_output, in_shared_memory)
    if header_bytes is not None:
        if header_bytes in _headers_seen:  # the second time: worth a plan
            _remember_plan(header_bytes, header, request, encoding)
        else:
            if len(_headers_seen) >= HEADERS_SEEN_MAX:
                _headers_seen.clear()
            _headers_seen.add(header_bytes)
    return request, encoding


# --- decoded headers, remembered ---------------------------------------------------------------
# A client sends the same JSON header with every request of one shape (the tensors' data
# follows it as binary), so the work of checking a header is done once per distinct header and
# remembered as a plan: which inputs sit where in the binary part, and the request's fields.
# Only headers whose every input is binary data (no "data", no shared memory) and whose outputs
# use no shared memory are remembered: nothing else of the request or the server's state goes
# into a plan but the decode limits, which are checked again each time (BYTES elements).
# A body whose binary part does not have the planned size is decoded from scratch, for its error.
# A plan is made the second time a header is seen: a client that puts a new `id` in every header
# would otherwise pay for a plan per request (about 4 µs) and never use one.
PLANNED_HEADER_MAX_BYTES = 2048
PLANNED_HEADERS_MAX = 256  # distinct headers remembered; full: forgotten all at once
HEADERS_SEEN_MAX = 1024  # headers seen once, kept to recognise a second time; likewise
_PLANNED_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters"})
_PLANNED_OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})


@dataclass(slots=True)
class HeaderPlan:
    """What a remembered header decodes to, less the tensors' data."""

    # name, datatype, shape, bytes, and for BYTES the elements of the request's BYTES inputs
    # up to this one (checked against the limits again, where the full decode checks them)
    inputs: tuple[tuple[str, str, tuple[int, ...], int, int], ...]
    binary_bytes: int
    template: InferenceRequest  # the request's fields; its inputs are built per body
    encoding: OutputEncoding

    def request(
        self, body: bytes, json_end: int, model_name: str, model_version: str, limits: DecodeLimits
    ) -> InferenceRequest | None:
        """The request of `body`, or None when its binary part is not the planned size."""
        if len(body) - json_end != self.binary_bytes:
            return None
        inputs: dict[str, np.ndarray] = {}
        offset = json_end
        for name, datatype, shape, size, bytes_elements in self.inputs:
            if datatype == "BYTES":  # its elements' lengths are in the data
                check_bytes_elements(bytes_elements, limits)
                inputs[name] = array_from_bytes(
                    name, body, datatype, shape, offset, size, model_name
                )
            else:  # its size was checked against its shape when the plan was made
                inputs[name] = np.ndarray(shape, WIRE_DTYPE_BY_DATATYPE[datatype], body, offset)
            offset += size
        template = self.template
        return InferenceRequest(
            model_name,
            model_version,
            inputs,
            template.id,
            template.requested_outputs,
            dict(template.parameters),
            template.priority,
            template.timeout_us,
            "http",
            template.sequence_id,
            template.sequence_start,
            template.sequence_end,
        )


_header_plans: dict[bytes, HeaderPlan] = {}
_headers_seen: set[bytes] = set()


def _remember_plan(
    key: bytes, header: dict[str, Any], request: InferenceRequest, encoding: OutputEncoding
) -> None:
    """Remember how `key`, a header just decoded without error, decodes (when it may be)."""
    for spec in header.get("outputs") or ():  # (an output in shared memory names its region)
        if not (spec.get("parameters") or {}).keys() <= _PLANNED_OUTPUT_PARAMETERS:
            return
    inputs = []
    bytes_elements = 0
    for spec in header["inputs"]:
        parameters = spec.get("parameters")
        if (
            not spec.keys() <= _PLANNED_INPUT_KEYS
            or not isinstance(parameters, dict)
            or list(parameters) != ["binary_data_size"]
        ):
            return  # JSON data, shared memory
        array = request.inputs[spec["name"]]
        datatype = spec["datatype"]
        if datatype == "BYTES":
            bytes_elements += array.size
        size = parameters["binary_data_size"]
        inputs.append((spec["name"], datatype, array.shape, size, bytes_elements))
    if len(_header_plans) >= PLANNED_HEADERS_MAX:
        _header_plans.clear()
    _header_plans[key] = HeaderPlan(
        tuple(inputs),
        sum(size for _, _, _, size, _ in inputs),
        dataclasses.replace(request, inputs={}, parameters=dict(request.parameters)),
        encoding,
    )


def parse_json(data: bytes | memoryview) -> Any:
    """A request's JSON. Like Triton's parser, NaN and Infinity literals are accepted (the
    standard library's parser reads them; orjson, on the hot path, does not)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(bytes(data), parse_constant=float)
        except (ValueError, RecursionError):
            raise invalid(f"failed to parse the request JSON buffer: {exc}") from None


# the request parameters Triton reads itself, and the JSON type each must have
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
    "binary_data_output": (bool,),
}


def _check_parameter(key: str, value: Any) -> None:
    """Refuse reserved keys and values of the wrong JSON type, as Triton does."""
    if key.startswith("triton_"):
        raise invalid(
            f"parameter keys starting with 'triton_' are reserved for Triton usage "
            f"and should not be specified: '{key}'"
        )
    expected = _PARAMETER_TYPES.get(key)
    if expected is not None:
        if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
            names = " or ".join("boolean" if t is bool else t.__name__ for t in expected)
            raise invalid(f"parameter '{key}' must be a {names}")
    elif value is None or isinstance(value, (dict, list)):
        raise invalid(
            f"parameter '{key}' has invalid type. It should be either 'int', 'bool', "
            "'double' or 'string'."
        )


def _unsigned(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameter '{name}' must be a non-negative integer")
    return value


def _decode_inputs(
    specs: Any,
    body: bytes,
    binary_start: int,
    shared_memory: SharedMemoryManager | None,
    limits: DecodeLimits,
    model: str = "",
) -> dict[str, np.ndarray]:
    if not isinstance(specs, list):  # an empty list is checked against the model's inputs
        raise invalid("the request must list its 'inputs'")
    inputs: dict[str, np.ndarray] = {}
    offset = binary_start
    bytes_elements = 0
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid("each input must be an object with a 'name'")
        name = spec["name"]
        if name in inputs:
            raise invalid(f"input '{name}' is given twice")
        shape = check_shape(name, spec.get("shape", None))
        datatype = check_datatype(name, spec.get("datatype"))
        count = checked_count(name, shape, datatype)  # (an int64 overflow first, as Triton)
        if datatype == "BYTES":
            bytes_elements += count
            check_bytes_elements(bytes_elements, limits)
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid(f"input '{name}': 'parameters' must be an object")
        sources = (
            ("data" in spec) + ("binary_data_size" in params) + ("shared_memory_region" in params)
        )
        if sources != 1:
            raise invalid(
                f"Input '{name}' must set only one of the following fields: 'data', "
                "'binary_data_size' in 'parameters', 'shared_memory_region' in "
                "'parameters'"
            )
        if "shared_memory_region" in params:
            manager = require_enabled(shared_memory)
            reference = shared_memory_reference(
                name,
                params["shared_memory_region"],
                params.get("shared_memory_byte_size"),
                params.get("shared_memory_offset", 0),
            )
            inputs[name] = array_from_bytes(
                name, manager.read(reference), datatype, shape, model=model
            )
            continue
        if "data" in spec:
            if datatype == "BYTES":
                inputs[name] = array_from_json(name, spec["data"], datatype, shape)
                _check_json_input_size(name, inputs[name], limits)
            elif count * ELEMENT_SIZE_BY_DATATYPE[datatype] > limits.max_input_size:
                raise _json_input_too_large(
                    name, count * ELEMENT_SIZE_BY_DATATYPE[datatype], limits
                )
            else:
                inputs[name] = array_from_json(name, spec["data"], datatype, shape)
            continue
        size = _unsigned(params["binary_data_size"], "binary_data_size")
        if offset + size > len(body):
            raise invalid(
                f"unexpected size for input '{name}', expecting {size} additional bytes "
                f"but only {len(body) - offset} remain in the request body"
            )
        inputs[name] = array_from_bytes(name, body, datatype, shape, offset, size, model)
        offset += size
    if offset != len(body):
        raise invalid(
            f"unexpected additional input data: {len(body) - offset} bytes after the "
            "last binary input"
        )
    return inputs


def check_bytes_elements(count: int, limits: DecodeLimits) -> None:
    """Refuse a request whose BYTES tensors hold more than --http-max-bytes-elements elements
    (each one becomes a Python object), before any is decoded."""
    if count > limits.max_bytes_elements:
        raise invalid(
            f"request has {count} BYTES tensor elements, more than the maximum of "
            f"{limits.max_bytes_elements}. Use --http-max-bytes-elements to increase the limit."
        )


def _check_json_input_size(name: str, decoded: np.ndarray, limits: DecodeLimits) -> None:
    """Triton's check for a JSON BYTES input: its serialized size (each string plus a 4-byte
    length) must not pass --http-max-input-size. (Other types: from the shape, before
    decoding.)"""
    byte_size = sum(len(item) for item in decoded.reshape(-1)) + 4 * decoded.size
    if byte_size > limits.max_input_size:
        raise _json_input_too_large(name, byte_size, limits)


def _json_input_too_large(name: str, byte_size: int, limits: DecodeLimits) -> ServingError:
    return invalid(
        f"JSON input '{name}' has a byte_size ({byte_size} bytes) that exceeds the maximum "
        f"allowed value of {limits.max_input_size} bytes. Use --http-max-input-size to increase "
        "the limit."
    )


def _decode_outputs(
    specs: Any, shared_memory: SharedMemoryManager | None
) -> tuple[
    tuple[RequestedOutput, ...] | None, dict[str, bool | None], dict[str, SharedMemoryReference]
]:
    if specs is None:
        return None, {}, {}
    if not isinstance(specs, list):
        raise invalid("request 'outputs' must be a list")
    if not specs:  # as Triton: an empty list asks for every output
        return None, {}, {}
    requested: list[RequestedOutput] = []
    binary: dict[str, bool | None] = {}
    in_shared_memory: dict[str, SharedMemoryReference] = {}
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid("each requested output must be an object with a 'name'")
        name = spec["name"]
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid(f"output '{name}': 'parameters' must be an object")
        flag = params.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise invalid(f"output '{name}': 'binary_data' must be a boolean")
        if "shared_memory_region" in params:
            in_shared_memory[name] = output_destination(
                shared_memory,
                name,
                params["shared_memory_region"],
                params.get("shared_memory_byte_size"),
                params.get("shared_memory_offset", 0),
                classification="classification" in params,
                binary_data=bool(flag),
            )
        classification = _unsigned(params.get("classification", 0), "classification")
        requested.append(RequestedOutput(name, flag, classification))
        binary[name] = bool(flag)  # as Triton: a listed output is JSON unless it asks
    return tuple(requested), binary, in_shared_memory


def encode_response(
    response: InferenceResponse,
    encoding: OutputEncoding,
    shared_memory: SharedMemoryManager | None = None,
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length. Outputs in
    client shared memory are written there and carry no data."""
    outputs, blobs = [], []
    in_shared_memory = encoding.shared_memory_by_output if shared_memory is not None else None
    for name, array in response.outputs.items():
        datatype = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        flag = encoding.binary_by_output.get(name)
        reference = in_shared_memory.get(name) if in_shared_memory else None
        if reference is not None and shared_memory is not None:
            entry["parameters"] = _write_to_shared_memory(shared_memory, reference, name, array)
        elif flag if flag is not None else encoding.binary_default:
            blob = array_to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype in ("FP16", "BF16"):
            raise invalid(
                f"sending {datatype} data via JSON is not supported. Please use the "
                "binary data format for output"
            )
        else:
            entry["data"] = array_to_json(array)
        outputs.append(entry)
    header: dict[str, Any] = {}
    if response.id:
        header["id"] = response.id
    header["model_name"] = response.model_name
    header["model_version"] = response.model_version
    header["outputs"] = outputs
    json_part = orjson.dumps(header)
    if not blobs:
        return json_part, None
    return b"".join([json_part, *blobs]), len(json_part)


def _write_to_shared_memory(
    shared_memory: SharedMemoryManager,
    reference: SharedMemoryReference,
    name: str,
    array: np.ndarray,
) -> dict[str, Any]:
    """Write an output's wire bytes into its region; the parameters that describe where."""
    blob = array_to_bytes(array)
    shared_memory.write(reference, name, blob)
    parameters: dict[str, Any] = {
        "shared_memory_region": reference.region,
        "shared_memory_byte_size": len(blob),
    }
    if reference.offset:
        parameters["shared_memory_offset"] = reference.offset
    return parameters


def choose_response_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate, by the highest q-weight in Accept-Encoding (first wins a tie)."""
    if not accept_encoding:
        return None
    best, best_q = None, 0.0
    for item in accept_encoding.split(","):
        token, _, params = item.strip().partition(";")
        token = token.strip().lower()
        if token not in ("gzip", "deflate"):
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q > best_q:
            best, best_q = token, q
    return best


def compress(body: bytes, encoding: str) -> bytes:
    """gzip or zlib-wrapped deflate, as Triton sends them."""
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 15)
    return compressor.compress(body) + compressor.flush()
