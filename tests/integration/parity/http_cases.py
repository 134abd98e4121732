"""The HTTP corpus sent to ferry and to tritonserver: one row per request, stateless (any order).

Models are the twins of tests/support/parity_models.py. Each row names how the answers are
compared beyond the status: `outputs` (infer results), `json` (the whole body), `keys` (the
body's key structure) or `status` (status only, plus an `{"error": ...}` body on errors).
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HttpCase:
    id: str
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    compare: str = "status"  # status | outputs | json | keys


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def fp32(shape: list[int], name: str = "INPUT0", **extra: Any) -> dict[str, Any]:
    """A JSON FP32 input of `shape` holding 0, 1, 2, ..."""
    return {
        "name": name,
        "shape": shape,
        "datatype": "FP32",
        "data": list(range(int(np.prod(shape)))),
        **extra,
    }


GOOD = fp32([1, 4])
A = {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1.5, 2.5, 3.5]}
B = {"name": "b", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
TEXT = {"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["hello", "wörld"]}


def infer(
    case_id: str,
    body: Any,
    model: str = "identity",
    headers: Mapping[str, str] | None = None,
    compare: str = "outputs",
) -> HttpCase:
    """A POST .../infer row; `body` is a request object (dumped) or raw bytes."""
    raw = body if isinstance(body, bytes) else dumps(body)
    return HttpCase(case_id, "POST", f"/v2/models/{model}/infer", raw, headers or {}, compare)


def inputs(*tensors: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(tensors), **extra}


def binary(
    case_id: str,
    header: dict[str, Any],
    blob: bytes,
    model: str = "identity",
    header_length: str | None = None,
) -> HttpCase:
    """A binary-extension request: JSON header + `blob`, Inference-Header-Content-Length set."""
    head = dumps(header)
    length = str(len(head)) if header_length is None else header_length
    return infer(
        case_id, head + blob, model, {"Inference-Header-Content-Length": length}, "outputs"
    )


def binary_input(name: str, shape: list[int], datatype: str, size: int) -> dict[str, Any]:
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def bytes_elements(*items: bytes) -> bytes:
    """BYTES wire form: each element a u32 LE length + its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


FLOATS4 = np.arange(4, dtype=np.float32).tobytes()
HALF4 = np.arange(4, dtype=np.float16).tobytes()


def output_named(name: str, **parameters: Any) -> dict[str, Any]:
    return {"name": name, "parameters": parameters}


def _get(case_id: str, path: str, compare: str = "status") -> HttpCase:
    return HttpCase(case_id, "GET", path, compare=compare)


def _post(case_id: str, path: str, body: Any = b"", compare: str = "status") -> HttpCase:
    raw = body if isinstance(body, bytes) else dumps(body)
    return HttpCase(case_id, "POST", path, raw, compare=compare)


# --- valid requests ---------------------------------------------------------------------------

VALID = [
    _get("health live", "/v2/health/live", "json"),
    _get("health ready", "/v2/health/ready", "json"),
    _get("server metadata", "/v2", "keys"),
    _get("model metadata", "/v2/models/identity", "json"),
    _get("model metadata by version", "/v2/models/identity/versions/1", "json"),
    _get("model metadata two inputs", "/v2/models/two_io", "json"),
    _get("model metadata BYTES", "/v2/models/strings", "json"),
    _get("model metadata no batching", "/v2/models/nobatch", "json"),
    _get("model metadata variable dims", "/v2/models/vardim", "json"),
    _get("model ready", "/v2/models/identity/ready", "json"),
    _get("model version ready", "/v2/models/identity/versions/1/ready", "json"),
    _get("model config", "/v2/models/identity/config", "json"),
    _get("model config by version", "/v2/models/two_io/versions/1/config", "json"),
    _get("model config no batching", "/v2/models/nobatch/config", "json"),
    _get("model statistics", "/v2/models/spare/stats", "keys"),
    _get("model version statistics", "/v2/models/spare/versions/1/stats", "keys"),
    _get("all statistics", "/v2/models/stats", "keys"),
    _post("repository index", "/v2/repository/index", b"", "json"),
    _post("repository index ready", "/v2/repository/index", {"ready": True}, "json"),
    _post("repository index not ready", "/v2/repository/index", {"ready": False}, "json"),
    _get("system shm status", "/v2/systemsharedmemory/status", "json"),
    _post("system shm unregister all", "/v2/systemsharedmemory/unregister", b"", "json"),
    _post(
        "system shm unregister unknown",
        "/v2/systemsharedmemory/region/nothing/unregister",
        b"",
        "json",
    ),
    _get("cuda shm status", "/v2/cudasharedmemory/status", "json"),
    _post("cuda shm unregister all", "/v2/cudasharedmemory/unregister", b"", "json"),
    infer("infer JSON", inputs(GOOD)),
    infer("infer JSON batch 3", inputs(fp32([3, 4]))),
    infer("infer JSON batch at max", inputs(fp32([8, 4]))),
    infer("infer JSON nested data", inputs({**GOOD, "data": [[0, 1, 2, 3]]})),
    infer("infer JSON with id", inputs(GOOD, id="request-7")),
    infer("infer JSON by version", inputs(GOOD), "identity/versions/1"),
    infer("infer JSON requested output", inputs(GOOD, outputs=[{"name": "OUTPUT0"}])),
    infer(
        "infer JSON binary output",
        inputs(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}]),
    ),
    infer("infer binary_data_output", inputs(GOOD, parameters={"binary_data_output": True})),
    infer(
        "binary_data_output with listed outputs",
        inputs(
            A,
            B,
            outputs=[{"name": "sum"}, output_named("prod", binary_data=True)],
            parameters={"binary_data_output": True},
        ),
        "two_io",
    ),
    infer(
        "binary_data_output false, a binary output",
        inputs(
            A,
            B,
            outputs=[output_named("sum", binary_data=True), {"name": "prod"}],
            parameters={"binary_data_output": False},
        ),
        "two_io",
    ),
    infer("infer custom parameters", inputs(GOOD, parameters={"tag": "x", "n": 3, "f": 1.5})),
    infer("infer priority", inputs(GOOD, parameters={"priority": 0})),
    infer("infer timeout", inputs(GOOD, parameters={"timeout": 5000000})),
    infer("infer empty parameters", inputs(GOOD, parameters={})),
    infer("infer empty outputs list", inputs(GOOD, outputs=[])),
    infer("infer two inputs", inputs(A, B), "two_io"),
    infer("infer two inputs one output", inputs(A, B, outputs=[{"name": "prod"}]), "two_io"),
    infer("infer inputs in reverse order", inputs(B, A), "two_io"),
    infer("infer BYTES JSON", inputs(TEXT), "strings"),
    infer(
        "infer BYTES empty strings",
        inputs({**TEXT, "data": ["", ""]}),
        "strings",
    ),
    infer("infer no batching", inputs(fp32([2, 3])), "nobatch"),
    infer("infer without an optional input", inputs(fp32([2])), "optional"),
    infer("infer with an optional input", inputs(fp32([2]), fp32([2], "INPUT1")), "optional"),
    infer("infer variable dims", inputs(fp32([5])), "vardim"),
    infer("infer variable dims empty", inputs(fp32([0])), "vardim"),
    infer(
        "infer INT8 JSON",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "INT8", "data": [-128, 127]}),
        "int8",
    ),
    infer(
        "infer BOOL JSON",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]}),
        "flags",
    ),
    infer(
        "classification 2",
        inputs(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"classification": 2}}]),
    ),
    infer(
        "classification all",
        inputs(fp32([2, 4]), outputs=[{"name": "OUTPUT0", "parameters": {"classification": 4}}]),
    ),
    infer(
        "classification 0 is none",
        inputs(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"classification": 0}}]),
    ),
    infer(
        "classification more than classes",
        inputs(GOOD, outputs=[{"name": "OUTPUT0", "parameters": {"classification": 9}}]),
    ),
    infer(
        "classification binary",
        inputs(
            GOOD,
            outputs=[{"name": "OUTPUT0", "parameters": {"classification": 1, "binary_data": True}}],
        ),
    ),
    infer(
        "classification no labels",
        inputs(A, B, outputs=[{"name": "sum", "parameters": {"classification": 2}}]),
        "two_io",
    ),
    binary("binary input", inputs(binary_input("INPUT0", [1, 4], "FP32", 16)), FLOATS4),
    binary(
        "binary in and out",
        inputs(
            binary_input("INPUT0", [1, 4], "FP32", 16),
            outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        ),
        FLOATS4,
    ),
    binary(
        "binary two inputs",
        inputs(binary_input("a", [1, 3], "FP32", 12), binary_input("b", [1, 3], "INT64", 24)),
        np.ones(3, np.float32).tobytes() + np.arange(3, dtype=np.int64).tobytes(),
        "two_io",
    ),
    binary(
        "binary and JSON inputs mixed",
        inputs(binary_input("a", [1, 3], "FP32", 12), B),
        np.ones(3, np.float32).tobytes(),
        "two_io",
    ),
    binary(
        "binary BYTES",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 14)),
        bytes_elements(b"ab", b"cdef"),
        "strings",
    ),
    binary(
        "binary BYTES empty elements",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 8)),
        bytes_elements(b"", b""),
        "strings",
    ),
    binary(
        "binary FP16",
        inputs(
            binary_input("INPUT0", [1, 4], "FP16", 8),
            outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        ),
        HALF4,
        "half",
    ),
    binary(
        "binary header only, JSON data",
        inputs(GOOD),
        b"",
    ),
    infer(
        "raw binary single input",
        FLOATS4,
        headers={"Inference-Header-Content-Length": "0"},
    ),
    infer(
        "raw binary variable dims",
        np.arange(6, dtype=np.float32).tobytes(),
        "vardim",
        headers={"Inference-Header-Content-Length": "0"},
    ),
    infer(
        "raw binary BYTES element",
        b"427",
        "text1",
        headers={"Inference-Header-Content-Length": "0"},
    ),
    infer(
        "raw binary empty BYTES element",
        b"",
        "text1",
        headers={"Inference-Header-Content-Length": "0"},
    ),
    infer(
        "gzip request body",
        gzip.compress(dumps(inputs(GOOD))),
        headers={"Content-Encoding": "gzip"},
    ),
    infer(
        "deflate request body",
        zlib.compress(dumps(inputs(GOOD))),
        headers={"Content-Encoding": "deflate"},
    ),
    infer("identity content encoding", inputs(GOOD), headers={"Content-Encoding": "identity"}),
]

# --- bad requests -----------------------------------------------------------------------------

OUT = "OUTPUT0"


def bad(case_id: str, body: Any, model: str = "identity", **kwargs: Any) -> HttpCase:
    return infer(case_id, body, model, compare="status", **kwargs)


def output(**parameters: Any) -> dict[str, Any]:
    return {"name": OUT, "parameters": parameters}


BAD_JSON = [
    bad("empty body", b""),
    bad("whitespace body", b"   \n"),
    bad("truncated JSON", b'{"inputs": ['),
    bad("garbage bytes", b"\x00\x01garbage\xff"),
    bad("JSON null", b"null"),
    bad("JSON array", b"[1, 2, 3]"),
    bad("JSON number", b"42"),
    bad("JSON string", b'"inputs"'),
    bad("trailing comma", b'{"inputs": [],}'),
    bad(
        "NaN literal",
        b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", '
        b'"data": [NaN, 1, 2, 3]}]}',
    ),
    bad("single quotes", b"{'inputs': []}"),
    bad("trailing garbage", dumps(inputs(GOOD)) + b"xyz"),
    bad("two JSON objects", dumps(inputs(GOOD)) + dumps(inputs(GOOD))),
    bad("invalid UTF-8 in a string", b'{"id": "\xff\xfe", "inputs": []}'),
    bad("deep nesting", b'{"inputs": ' + b"[" * 200 + b"]" * 200 + b"}"),
    bad("deep nesting in data", dumps(inputs({**GOOD, "data": [[[[[[[[0, 1, 2, 3]]]]]]]]}))),
    bad("no inputs key", {}),
    bad("inputs is null", {"inputs": None}),
    bad("inputs is an object", {"inputs": GOOD}),
    bad("inputs is a string", {"inputs": "INPUT0"}),
    bad("inputs is empty", {"inputs": []}),
    bad("input is a number", {"inputs": [7]}),
    bad("input is a list", {"inputs": [[GOOD]]}),
]

BAD_INPUTS = [
    bad("input without name", inputs({k: v for k, v in GOOD.items() if k != "name"})),
    bad("input name is a number", inputs({**GOOD, "name": 5})),
    bad("input name is empty", inputs({**GOOD, "name": ""})),
    bad("input without shape", inputs({k: v for k, v in GOOD.items() if k != "shape"})),
    bad("input shape is a number", inputs({**GOOD, "shape": 4})),
    bad("input shape is a string", inputs({**GOOD, "shape": "1,4"})),
    bad("input shape is null", inputs({**GOOD, "shape": None})),
    bad("input shape negative", inputs({**GOOD, "shape": [-1, 4]})),
    bad("input shape float", inputs({**GOOD, "shape": [1.0, 4]})),
    bad("input shape string dims", inputs({**GOOD, "shape": ["1", "4"]})),
    bad("input shape bool dims", inputs({**GOOD, "shape": [True, 4]})),
    bad("input shape huge", inputs({**GOOD, "shape": [2**40, 2**40]})),
    bad("input shape over int64", inputs({**GOOD, "shape": [2**64, 4]})),
    bad("input without datatype", inputs({k: v for k, v in GOOD.items() if k != "datatype"})),
    bad("datatype lower case", inputs({**GOOD, "datatype": "fp32"})),
    bad("datatype unknown", inputs({**GOOD, "datatype": "FLOAT"})),
    bad("datatype is a number", inputs({**GOOD, "datatype": 11})),
    bad("datatype empty", inputs({**GOOD, "datatype": ""})),
    bad("datatype TYPE_FP32", inputs({**GOOD, "datatype": "TYPE_FP32"})),
    bad("datatype mismatch INT32", inputs({**GOOD, "datatype": "INT32"})),
    bad("datatype mismatch FP64", inputs({**GOOD, "datatype": "FP64"})),
    bad("datatype mismatch BYTES", inputs({**GOOD, "datatype": "BYTES"})),
    bad("datatype BF16", inputs({**GOOD, "datatype": "BF16"})),
    bad("input without data", inputs({k: v for k, v in GOOD.items() if k != "data"})),
    bad("data is null", inputs({**GOOD, "data": None})),
    bad("data is a number", inputs({**GOOD, "data": 1})),
    bad("data is a string", inputs({**GOOD, "data": "1,2,3,4"})),
    bad("data is an object", inputs({**GOOD, "data": {"0": 1}})),
    bad("data has strings", inputs({**GOOD, "data": ["a", "b", "c", "d"]})),
    bad("data has numeric strings", inputs({**GOOD, "data": ["1", "2", "3", "4"]})),
    bad("data has null", inputs({**GOOD, "data": [1, None, 2, 3]})),
    bad("data has bools for FP32", inputs({**GOOD, "data": [True, False, True, False]})),
    bad("data has objects", inputs({**GOOD, "data": [{}, {}, {}, {}]})),
    bad("too few elements", inputs({**GOOD, "data": [1, 2, 3]})),
    bad("too many elements", inputs({**GOOD, "data": [1, 2, 3, 4, 5]})),
    bad("ragged nested data", inputs({**GOOD, "shape": [2, 4], "data": [[0, 1, 2, 3], [4]]})),
    bad("data empty", inputs({**GOOD, "data": []})),
    bad("rank too small", inputs({**GOOD, "shape": [4]})),
    bad("rank too large", inputs({**GOOD, "shape": [1, 4, 1]})),
    bad("wrong dim", inputs(fp32([1, 5]))),
    bad("batch above max", inputs(fp32([9, 4]))),
    bad("batch zero", inputs({**GOOD, "shape": [0, 4], "data": []})),
    bad("unknown input name", inputs({**GOOD, "name": "INPUT1"})),
    bad("input name case", inputs({**GOOD, "name": "input0"})),
    bad("extra input", inputs(GOOD, fp32([1, 4], name="EXTRA"))),
    bad("duplicate input", inputs(GOOD, GOOD)),
    bad("missing second input", inputs(A), "two_io"),
    bad("missing first input", inputs(B), "two_io"),
    bad("duplicate with missing", inputs(A, A), "two_io"),
    bad("only the optional input", inputs(fp32([2], "INPUT1")), "optional"),
    bad("no inputs for an optional model", inputs(), "optional"),
    bad("batch sizes disagree", inputs(A, {**B, "shape": [2, 3], "data": [1] * 6}), "two_io"),
    bad("no batching with batch dim", inputs(fp32([1, 2, 3])), "nobatch"),
    bad("no batching wrong dims", inputs(fp32([3, 2])), "nobatch"),
    bad("variable dims rank", inputs(fp32([2, 2])), "vardim"),
    bad(
        "INT8 overflow",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "INT8", "data": [300, 1]}),
        "int8",
    ),
    bad(
        "INT8 float value",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "INT8", "data": [1.5, 1]}),
        "int8",
    ),
    bad("INT64 float value", inputs(A, {**B, "data": [1.5, 2, 3]}), "two_io"),
    bad("INT64 overflow", inputs(A, {**B, "data": [2**64, 2, 3]}), "two_io"),
    bad(
        "BOOL as numbers",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "BOOL", "data": [1, 0]}),
        "flags",
    ),
    bad(
        "BOOL as strings",
        inputs({"name": "INPUT0", "shape": [1, 2], "datatype": "BOOL", "data": ["true", "false"]}),
        "flags",
    ),
    bad(
        "FP16 as JSON",
        inputs({"name": "INPUT0", "shape": [1, 4], "datatype": "FP16", "data": [1, 2, 3, 4]}),
        "half",
    ),
    bad("input parameters not an object", inputs({**GOOD, "parameters": [1]})),
    bad("data and binary_data_size", inputs({**GOOD, "parameters": {"binary_data_size": 16}})),
    bad("BYTES numbers", inputs({**TEXT, "data": [1, 2]}), "strings"),
    bad("BYTES nested lists", inputs({**TEXT, "data": [["a"], ["b"]]}), "strings"),
    bad("BYTES too few", inputs({**TEXT, "data": ["a"]}), "strings"),
    bad("BYTES too many", inputs({**TEXT, "data": ["a", "b", "c"]}), "strings"),
    bad("BYTES null element", inputs({**TEXT, "data": ["a", None]}), "strings"),
    bad("BYTES object element", inputs({**TEXT, "data": ["a", {"b": 1}]}), "strings"),
    bad("BYTES for FP32 model", inputs({**TEXT}), "identity"),
]

BAD_OUTPUTS_AND_PARAMETERS = [
    bad("outputs is an object", inputs(GOOD, outputs={"name": OUT})),
    bad("outputs is a string", inputs(GOOD, outputs=OUT)),
    bad("output is a string", inputs(GOOD, outputs=[OUT])),
    bad("output without name", inputs(GOOD, outputs=[{"parameters": {}}])),
    bad("output name is a number", inputs(GOOD, outputs=[{"name": 0}])),
    bad("unknown output", inputs(GOOD, outputs=[{"name": "OUTPUT9"}])),
    bad("duplicate output", inputs(GOOD, outputs=[{"name": OUT}, {"name": OUT}])),
    bad("output parameters not an object", inputs(GOOD, outputs=[{"name": OUT, "parameters": 1}])),
    bad("binary_data is a string", inputs(GOOD, outputs=[output(binary_data="yes")])),
    bad("binary_data is a number", inputs(GOOD, outputs=[output(binary_data=1)])),
    bad("classification is a string", inputs(GOOD, outputs=[output(classification="2")])),
    bad("classification is a float", inputs(GOOD, outputs=[output(classification=1.5)])),
    bad("classification is negative", inputs(GOOD, outputs=[output(classification=-1)])),
    bad("classification is a bool", inputs(GOOD, outputs=[output(classification=True)])),
    bad(
        "classification of FP16",
        inputs(binary_input("INPUT0", [1, 4], "FP16", 8), outputs=[output(classification=1)]),
        "half",
    ),
    bad("parameters is a list", inputs(GOOD, parameters=[1])),
    bad("parameters is a string", inputs(GOOD, parameters="x")),
    bad("priority is a string", inputs(GOOD, parameters={"priority": "1"})),
    bad("priority is negative", inputs(GOOD, parameters={"priority": -1})),
    bad("priority is a float", inputs(GOOD, parameters={"priority": 1.5})),
    bad("timeout is a string", inputs(GOOD, parameters={"timeout": "10"})),
    bad("timeout is negative", inputs(GOOD, parameters={"timeout": -5})),
    bad("binary_data_output is a string", inputs(GOOD, parameters={"binary_data_output": "1"})),
    bad("reserved triton_ parameter", inputs(GOOD, parameters={"triton_x": 1})),
    bad("sequence_id on a plain model", inputs(GOOD, parameters={"sequence_id": 5})),
    bad("sequence_id is a list", inputs(GOOD, parameters={"sequence_id": [1]})),
    bad("sequence_start is a string", inputs(GOOD, parameters={"sequence_start": "yes"})),
    bad("custom parameter is an object", inputs(GOOD, parameters={"tag": {"a": 1}})),
    bad("custom parameter is null", inputs(GOOD, parameters={"tag": None})),
    bad("id is an object", inputs(GOOD, id={"a": 1})),
    bad("infer JSON numeric id", inputs(GOOD, id=7)),
    bad(
        "shared memory region unregistered",
        inputs(
            {k: v for k, v in GOOD.items() if k != "data"}
            | {"parameters": {"shared_memory_region": "nowhere", "shared_memory_byte_size": 16}}
        ),
    ),
    bad(
        "shared memory region with data",
        inputs(
            GOOD
            | {"parameters": {"shared_memory_region": "nowhere", "shared_memory_byte_size": 16}}
        ),
    ),
    bad(
        "shared memory region without size",
        inputs(
            {k: v for k, v in GOOD.items() if k != "data"}
            | {"parameters": {"shared_memory_region": "nowhere"}}
        ),
    ),
    bad(
        "shared memory output unregistered",
        inputs(GOOD, outputs=[output(shared_memory_region="nowhere", shared_memory_byte_size=16)]),
    ),
]

BAD_BINARY = [
    binary("header length not a number", inputs(GOOD), b"", header_length="abc"),
    binary("header length negative", inputs(GOOD), b"", header_length="-1"),
    binary("header length past the body", inputs(GOOD), b"", header_length="9999"),
    binary("header length empty", inputs(GOOD), b"", header_length=""),
    binary("header length float", inputs(GOOD), b"", header_length="12.5"),
    binary("header length cuts the JSON", inputs(GOOD), b"", header_length="10"),
    binary(
        "header length 0 on two inputs",
        inputs(A, B),
        b"",
        "two_io",
        header_length="0",
    ),
    infer(
        "raw binary wrong size",
        FLOATS4[:12],
        headers={"Inference-Header-Content-Length": "0"},
        compare="status",
    ),
    infer(
        "raw binary empty",
        b"",
        headers={"Inference-Header-Content-Length": "0"},
        compare="status",
    ),
    infer(
        "raw binary two variable dims",
        np.arange(4, dtype=np.float32).tobytes(),
        "grid",
        headers={"Inference-Header-Content-Length": "0"},
        compare="status",
    ),
    infer(
        "raw binary odd size for variable dims",
        b"\x00" * 6,
        "vardim",
        headers={"Inference-Header-Content-Length": "0"},
        compare="status",
    ),
    infer(
        "raw binary BYTES truncated",
        b"\x05\x00\x00\x00ab",
        "strings",
        headers={"Inference-Header-Content-Length": "0"},
        compare="status",
    ),
    binary(
        "binary size past the body",
        inputs(binary_input("INPUT0", [1, 4], "FP32", 32)),
        FLOATS4,
    ),
    binary(
        "binary size smaller than the shape",
        inputs(binary_input("INPUT0", [1, 4], "FP32", 12)),
        FLOATS4[:12],
    ),
    binary(
        "binary trailing bytes",
        inputs(binary_input("INPUT0", [1, 4], "FP32", 16)),
        FLOATS4 + b"xx",
    ),
    binary("binary size negative", inputs(binary_input("INPUT0", [1, 4], "FP32", -16)), FLOATS4),
    binary(
        "binary size a string",
        inputs(
            {**binary_input("INPUT0", [1, 4], "FP32", 0), "parameters": {"binary_data_size": "16"}}
        ),
        FLOATS4,
    ),
    binary(
        "binary size a float",
        inputs(
            {**binary_input("INPUT0", [1, 4], "FP32", 0), "parameters": {"binary_data_size": 16.0}}
        ),
        FLOATS4,
    ),
    binary(
        "binary data without size parameter",
        inputs({k: v for k, v in GOOD.items() if k != "data"}),
        FLOATS4,
    ),
    binary(
        "binary second input short",
        inputs(binary_input("a", [1, 3], "FP32", 12), binary_input("b", [1, 3], "INT64", 24)),
        np.ones(3, np.float32).tobytes() + b"\x00" * 20,
        "two_io",
    ),
    binary(
        "binary FP16 wrong size",
        inputs(binary_input("INPUT0", [1, 4], "FP16", 6)),
        HALF4[:6],
        "half",
    ),
    binary(
        "binary FP16 JSON output",
        inputs(binary_input("INPUT0", [1, 4], "FP16", 8)),
        HALF4,
        "half",
    ),
    binary(
        "binary BYTES truncated length",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 7)),
        bytes_elements(b"ab") + b"\x01\x00\x00",
        "strings",
    ),
    binary(
        "binary BYTES element past the end",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 10)),
        bytes_elements(b"ab") + b"\x09\x00\x00\x00",
        "strings",
    ),
    binary(
        "binary BYTES too few elements",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 6)),
        bytes_elements(b"ab"),
        "strings",
    ),
    binary(
        "binary BYTES too many elements",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 15)),
        bytes_elements(b"a", b"b", b"c"),
        "strings",
    ),
    binary(
        "binary BYTES huge element length",
        inputs(binary_input("INPUT0", [1, 2], "BYTES", 8)),
        b"\xff\xff\xff\xff" + b"\x00" * 4,
        "strings",
    ),
    binary(
        "binary BF16",
        inputs(binary_input("INPUT0", [1, 4], "BF16", 8)),
        b"\x00" * 8,
    ),
    infer(
        "unknown content encoding",
        inputs(GOOD),
        headers={"Content-Encoding": "br"},
        compare="status",
    ),
    infer(
        "corrupt gzip body",
        b"\x1f\x8b\x08\x00garbage",
        headers={"Content-Encoding": "gzip"},
        compare="status",
    ),
    infer(
        "gzip header on a plain body",
        inputs(GOOD),
        headers={"Content-Encoding": "gzip"},
        compare="status",
    ),
]

BAD_MODELS = [
    bad("unknown model", inputs(GOOD), "nope"),
    bad("unknown model, invalid body", b"garbage", "nope"),
    bad("unknown model, empty body", b"", "nope"),
    bad(
        "unknown model, binary header",
        b"{}",
        "nope",
        headers={"Inference-Header-Content-Length": "abc"},
    ),
    bad("unknown version", inputs(GOOD), "identity/versions/2"),
    bad("unknown version, invalid body", b"garbage", "identity/versions/2"),
    bad("version zero", inputs(GOOD), "identity/versions/0"),
    bad("version huge", inputs(GOOD), "identity/versions/99999999999999999999"),
    bad("version negative", inputs(GOOD), "identity/versions/-1"),
    bad("version not a number", inputs(GOOD), "identity/versions/one"),
    bad("version empty", inputs(GOOD), "identity/versions/"),
    bad("model name with dots", inputs(GOOD), ".."),
    bad("model name encoded slash", inputs(GOOD), "iden%2Ftity"),
    bad("model name percent", inputs(GOOD), "identity%20"),
]

ROUTES = [
    _get("model metadata unknown", "/v2/models/nope"),
    _get("model metadata unknown version", "/v2/models/identity/versions/2"),
    _get("model metadata version zero", "/v2/models/identity/versions/0"),
    _get("model metadata version not a number", "/v2/models/identity/versions/x"),
    _get("model metadata trailing slash", "/v2/models/identity/"),
    _get("model ready unknown", "/v2/models/nope/ready"),
    _get("model ready unknown version", "/v2/models/identity/versions/3/ready"),
    _get("model ready unknown model and version", "/v2/models/nope/versions/1/ready"),
    _get("model config unknown", "/v2/models/nope/config"),
    _get("model config unknown version", "/v2/models/identity/versions/3/config"),
    _get("model statistics unknown", "/v2/models/nope/stats"),
    _get("model statistics unknown version", "/v2/models/identity/versions/3/stats"),
    _get("models list", "/v2/models"),
    _get("models slash", "/v2/models/"),
    _get("root", "/"),
    _get("v1", "/v1/models/identity"),
    _get("unknown v2 route", "/v2/nothing"),
    _get("unknown model route", "/v2/models/identity/nothing"),
    _get("health unknown", "/v2/health/dead"),
    _get("server metadata trailing slash", "/v2/"),
    HttpCase("POST server metadata", "POST", "/v2"),
    HttpCase("PUT health live", "PUT", "/v2/health/live"),
    HttpCase("POST health ready", "POST", "/v2/health/ready"),
    HttpCase("DELETE model", "DELETE", "/v2/models/identity"),
    HttpCase("POST model metadata", "POST", "/v2/models/identity"),
    HttpCase("POST model ready", "POST", "/v2/models/identity/ready"),
    HttpCase("POST model config", "POST", "/v2/models/identity/config", b"{}"),
    HttpCase("GET infer", "GET", "/v2/models/identity/infer"),
    HttpCase("PUT infer", "PUT", "/v2/models/identity/infer", dumps(inputs(GOOD))),
    HttpCase("GET repository index", "GET", "/v2/repository/index"),
    HttpCase("GET load", "GET", "/v2/repository/models/spare/load"),
    HttpCase("GET shm register", "GET", "/v2/systemsharedmemory/register"),
    HttpCase("POST shm status", "POST", "/v2/systemsharedmemory/status"),
    HttpCase("POST statistics", "POST", "/v2/models/stats"),
    _post("repository index invalid JSON", "/v2/repository/index", b"{ready"),
    _post("repository index JSON array", "/v2/repository/index", b"[]"),
    _post("repository index ready is a string", "/v2/repository/index", {"ready": "yes"}),
    _post("repository index ready is a number", "/v2/repository/index", {"ready": 1}),
    _post("named repository index", "/v2/repository/other/index"),
    _post("load unknown model", "/v2/repository/models/nope/load"),
    _post("load invalid JSON", "/v2/repository/models/nope/load", b"{"),
    _post("load body is an array", "/v2/repository/models/nope/load", b"[]"),
    _post("load parameters is a list", "/v2/repository/models/nope/load", {"parameters": []}),
    _post(
        "load config is a number", "/v2/repository/models/nope/load", {"parameters": {"config": 5}}
    ),
    _post(
        "load config invalid JSON",
        "/v2/repository/models/nope/load",
        {"parameters": {"config": "{not json"}},
    ),
    _post(
        "load file not base64",
        "/v2/repository/models/nope/load",
        {"parameters": {"config": "{}", "file:1/model.onnx": "!!!"}},
    ),
    _post(
        "load file without config",
        "/v2/repository/models/nope/load",
        {"parameters": {"file:1/model.onnx": "AAAA"}},
    ),
    _post("load encoded dot-dot name", "/v2/repository/models/%2E%2E/load"),
    _post("load encoded slash name", "/v2/repository/models/a%2Fb/load"),
    _post("load named repository", "/v2/repository/other/models/identity/load"),
    _post("unload unknown model", "/v2/repository/models/nope/unload"),
    _post("unload invalid JSON", "/v2/repository/models/nope/unload", b"{"),
    _post("unload named repository", "/v2/repository/other/models/identity/unload"),
    _post("unknown repository action", "/v2/repository/models/identity/reload"),
    _get("system shm status unknown region", "/v2/systemsharedmemory/region/nothing/status"),
    _post("system shm register no body", "/v2/systemsharedmemory/region/r1/register"),
    _post("system shm register invalid JSON", "/v2/systemsharedmemory/region/r1/register", b"{"),
    _post("system shm register array", "/v2/systemsharedmemory/region/r1/register", b"[]"),
    _post(
        "system shm register without key",
        "/v2/systemsharedmemory/region/r1/register",
        {"offset": 0, "byte_size": 16},
    ),
    _post(
        "system shm register without byte_size",
        "/v2/systemsharedmemory/region/r1/register",
        {"key": "/parity_none", "offset": 0},
    ),
    _post(
        "system shm register key is a number",
        "/v2/systemsharedmemory/region/r1/register",
        {"key": 5, "offset": 0, "byte_size": 16},
    ),
    _post(
        "system shm register byte_size is a string",
        "/v2/systemsharedmemory/region/r1/register",
        {"key": "/parity_none", "offset": 0, "byte_size": "16"},
    ),
    _post(
        "system shm register negative offset",
        "/v2/systemsharedmemory/region/r1/register",
        {"key": "/parity_none", "offset": -1, "byte_size": 16},
    ),
    _post(
        "system shm register missing object",
        "/v2/systemsharedmemory/region/r1/register",
        {"key": "/parity_none", "offset": 0, "byte_size": 16},
    ),
    _post(
        "system shm register without region",
        "/v2/systemsharedmemory/register",
        {"key": "/parity_none", "offset": 0, "byte_size": 16},
    ),
    _post("system shm unregister invalid JSON", "/v2/systemsharedmemory/unregister", b"{"),
    _get("cuda shm status unknown region", "/v2/cudasharedmemory/region/nothing/status"),
    _post(
        "cuda shm register",
        "/v2/cudasharedmemory/region/r1/register",
        {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 16},
    ),
    _post("cuda shm register invalid JSON", "/v2/cudasharedmemory/region/r1/register", b"{"),
    _post("cuda shm unregister unknown", "/v2/cudasharedmemory/region/nothing/unregister"),
    _get("trace setting", "/v2/trace/setting"),
    _get("logging", "/v2/logging"),
    _get("drift of an unmonitored model", "/v2/models/identity/drift"),
]

# Requests sent to ferry alone, because they harm the oracle: (row, ferry's status, why).
TRITON_CRASHES = "tritonserver 2.51 dies (the process exits)"
TRITON_LOADS_PARENT = (
    "tritonserver loads the repository's parent folder as model '..', fails, and is not "
    "ready from then on (strict readiness)"
)
FERRY_ONLY = [
    (
        bad("classification of BYTES", inputs(TEXT, outputs=[output(classification=1)]), "strings"),
        400,
        TRITON_CRASHES,
    ),
    (_post("load dot-dot name", "/v2/repository/models/../load"), 400, TRITON_LOADS_PARENT),
]

BAD = BAD_JSON + BAD_INPUTS + BAD_OUTPUTS_AND_PARAMETERS + BAD_BINARY + BAD_MODELS + ROUTES
CASES = VALID + BAD
