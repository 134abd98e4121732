"""Send one HTTP corpus row to a server and reduce the answer to what the comparison looks at."""

from __future__ import annotations

import http.client
import json
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from tests.integration.parity.differences import Difference
from tests.integration.parity.grpc_cases import SERVICE, GrpcCase
from tests.integration.parity.http_cases import HttpCase

NUMPY_BY_DATATYPE = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
}
# Requests compared in this run: `compared`, `equal`, `deliberate` (printed at the end).
TALLY: Counter[str] = Counter()


def tally(outcome: str) -> None:
    """Count one compared request: `equal` or `deliberate`."""
    TALLY["compared"] += 1
    TALLY[outcome] += 1


def judge(
    label: str, answers: tuple[Any, Any], problem: str | None, difference: Difference | None
) -> None:
    """Assert that the two answers agree (`problem` is None) or, for a listed difference, that
    the statuses (or gRPC codes) in `answers` are exactly the listed ones; count the request."""
    if difference is None:
        assert problem is None, f"{label}: {problem}"
        tally("equal")
        return
    assert answers == (difference.triton, difference.ferry), (
        f"{label}: listed as a deliberate difference ({difference.reason}), but "
        f"triton answered {answers[0]}, ferry {answers[1]}"
    )
    tally("deliberate")


# Fields that name the backend, so they differ between an ONNX model and its python twin.
BACKEND_FIELDS = frozenset({"platform", "backend", "runtime", "default_model_filename"})


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(url: str, case: HttpCase) -> HttpAnswer:
    """One request on its own connection (a refused request must not poison the next)."""
    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.putrequest(case.method, case.path, skip_accept_encoding=True)
        headers = {"Content-Length": str(len(case.body)), **case.headers}
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders(case.body)
        response = connection.getresponse()
        return HttpAnswer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def _binary_tensor(datatype: str, blob: bytes) -> list[Any]:
    if datatype == "BYTES":
        items, position = [], 0
        while position < len(blob):
            (length,) = struct.unpack_from("<I", blob, position)
            items.append(blob[position + 4 : position + 4 + length].decode(errors="replace"))
            position += 4 + length
        return items
    return np.frombuffer(blob, dtype=NUMPY_BY_DATATYPE[datatype]).tolist()  # type: ignore[no-any-return]


def infer_result(answer: HttpAnswer) -> dict[str, Any]:
    """An infer response as {model, version, id, outputs by name}, binary data decoded."""
    header_length = answer.headers.get("inference-header-content-length")
    end = len(answer.body) if header_length is None else int(header_length)
    header = json.loads(answer.body[:end])
    position = end
    outputs = {}
    for output in header["outputs"]:
        parameters = dict(output.get("parameters", {}))
        size = parameters.pop("binary_data_size", None)
        if size is None:
            data = output.get("data")
        else:
            data = _binary_tensor(output["datatype"], answer.body[position : position + size])
            position += size
        outputs[output["name"]] = {
            "datatype": output["datatype"],
            "shape": output["shape"],
            "data": data,
            "binary": size is not None,
            "parameters": parameters,
        }
    return {
        "model_name": header.get("model_name"),
        "model_version": header.get("model_version"),
        "id": header.get("id"),
        "outputs": outputs,
    }


def common_fields(triton: Any, ferry: Any) -> tuple[Any, Any]:
    """Both values cut down to the fields both servers know (dict keys present on both sides,
    lists element-wise), less the fields that name the backend."""
    if isinstance(triton, dict) and isinstance(ferry, dict):
        keys = (triton.keys() & ferry.keys()) - BACKEND_FIELDS
        pairs = {key: common_fields(triton[key], ferry[key]) for key in sorted(keys)}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    if isinstance(triton, list) and isinstance(ferry, list) and len(triton) == len(ferry):
        pairs_list = [common_fields(t, f) for t, f in zip(triton, ferry, strict=True)]
        return [p[0] for p in pairs_list], [p[1] for p in pairs_list]
    return triton, ferry


def key_structure(value: Any) -> Any:
    """The shape of a JSON value: dict keys (recursively), a list's first item, value types."""
    if isinstance(value, dict):
        return {key: key_structure(item) for key, item in value.items()}
    if isinstance(value, list):
        return [key_structure(value[0])] if value else []
    return type(value).__name__


def without_backend_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_backend_fields(v) for k, v in value.items() if k not in BACKEND_FIELDS}
    if isinstance(value, list):
        return [without_backend_fields(item) for item in value]
    return value


def _error_shape(answer: HttpAnswer) -> str:
    """How an error body looks: `{"error": str}`, other JSON, or not JSON."""
    try:
        value = json.loads(answer.body.decode(errors="replace"))
    except ValueError:
        return "not JSON" if answer.body else "empty"
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return "error object"
    return "other JSON"


def mismatch(case: HttpCase, triton: HttpAnswer, ferry: HttpAnswer) -> str | None:
    """Why ferry's answer differs from Triton's (None: they agree)."""
    if triton.status != ferry.status:
        return f"status: triton {triton.status}, ferry {ferry.status}"
    if triton.status >= 400:
        shapes = _error_shape(triton), _error_shape(ferry)
        return None if shapes[0] == shapes[1] else f"error bodies: {shapes}"
    if case.compare == "outputs":
        pair = infer_result(triton), infer_result(ferry)
    elif case.compare == "json":
        pair = common_fields(
            without_backend_fields(triton.json() if triton.body else None),
            without_backend_fields(ferry.json() if ferry.body else None),
        )
        if not triton.body or not ferry.body:
            pair = (triton.body, ferry.body)
    elif case.compare == "keys":
        pair = key_structure(triton.json()), key_structure(ferry.json())
    else:
        return None
    return None if pair[0] == pair[1] else f"bodies:\n  triton {pair[0]}\n  ferry  {pair[1]}"


@dataclass(frozen=True)
class GrpcAnswer:
    code: str  # grpc.StatusCode name
    details: str
    response: Any  # the response message (OK only)


def call(channel: Any, case: GrpcCase) -> GrpcAnswer:
    """One unary call; any status is an answer."""
    import grpc

    if isinstance(case.request, bytes):
        method = channel.unary_unary(case.path or SERVICE + case.rpc)
        request: Any = case.request
    else:
        response_type = getattr(pb, type(case.request).__name__.replace("Request", "Response"))
        method = channel.unary_unary(
            SERVICE + case.rpc,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        request = case.request
    try:
        return GrpcAnswer("OK", "", method(request, timeout=60))
    except grpc.RpcError as error:
        return GrpcAnswer(error.code().name, error.details() or "", None)


def grpc_infer_result(response: Any) -> dict[str, Any]:
    outputs = {}
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        outputs[output.name] = {
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": _binary_tensor(output.datatype, raw),
        }
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": outputs,
    }


def grpc_mismatch(case: GrpcCase, triton: GrpcAnswer, ferry: GrpcAnswer) -> str | None:
    """Why ferry's answer differs from Triton's (None: they agree)."""
    from google.protobuf import json_format

    if triton.code != ferry.code:
        return (
            f"code: triton {triton.code} ({triton.details}), ferry {ferry.code} ({ferry.details})"
        )
    if triton.code != "OK" or case.compare == "status":
        return None
    if case.compare == "outputs":
        pair = grpc_infer_result(triton.response), grpc_infer_result(ferry.response)
    else:
        as_dicts = [
            json_format.MessageToDict(
                a.response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,  # zeros too: the schema is compared
            )
            for a in (triton, ferry)
        ]
        if case.compare == "keys":
            pair = key_structure(as_dicts[0]), key_structure(as_dicts[1])
        else:
            pair = common_fields(*(without_backend_fields(d) for d in as_dicts))
    return None if pair[0] == pair[1] else f"responses:\n  triton {pair[0]}\n  ferry  {pair[1]}"
