"""The gRPC corpus sent to ferry and to tritonserver: one row per call, stateless (any order).

`rpc` is a GRPCInferenceService method; a request given as bytes is sent unparsed (to `path`
when set). `compare`: `status` (the code only), `message` (the whole response, less the fields
that name the backend), `outputs` (infer results) or `keys` (the response's field structure).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb

from tests.integration.parity.http_cases import TRITON_LOADS_PARENT

SERVICE = "/inference.GRPCInferenceService/"


@dataclass(frozen=True)
class GrpcCase:
    id: str
    rpc: str
    request: Message | bytes
    compare: str = "status"  # status | message | outputs | keys
    path: str = ""  # a raw method path (unknown methods and services)


def tensor(
    name: str, datatype: str, shape: list[int], **contents: list[Any]
) -> pb.ModelInferRequest.InferInputTensor:
    message = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(message.contents, field).extend(values)
    return message


def infer_request(
    model: str = "identity",
    inputs: list[pb.ModelInferRequest.InferInputTensor] | None = None,
    raw: list[bytes] | None = None,
    outputs: list[str] | None = None,
    version: str = "",
    edit: Callable[[pb.ModelInferRequest], None] | None = None,
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.extend(inputs if inputs is not None else [tensor("INPUT0", "FP32", [1, 4])])
    request.raw_input_contents.extend(raw if raw is not None else [FLOATS4])
    for name in outputs or ():
        request.outputs.add(name=name)
    if edit is not None:
        edit(request)
    return request


FLOATS4 = np.arange(4, dtype=np.float32).tobytes()
A_RAW = np.array([1.5, 2.5, 3.5], dtype=np.float32).tobytes()
B_RAW = np.array([1, 2, 3], dtype=np.int64).tobytes()
TWO_IO = [tensor("a", "FP32", [1, 3]), tensor("b", "INT64", [1, 3])]


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def infer(case_id: str, compare: str = "outputs", **kwargs: Any) -> GrpcCase:
    return GrpcCase(case_id, "ModelInfer", infer_request(**kwargs), compare)


def bad(case_id: str, **kwargs: Any) -> GrpcCase:
    return infer(case_id, "status", **kwargs)


def parameter(request: Any, key: str, **value: Any) -> None:
    """Set request.parameters[key] to one InferParameter choice."""
    ((field, item),) = value.items()
    setattr(request.parameters[key], field, item)


def with_parameter(key: str, **value: Any) -> Callable[[pb.ModelInferRequest], None]:
    return lambda request: parameter(request, key, **value)


def with_output_parameter(key: str, **value: Any) -> Callable[[pb.ModelInferRequest], None]:
    def edit(request: pb.ModelInferRequest) -> None:
        if not request.outputs:
            request.outputs.add(name="OUTPUT0")
        parameter(request.outputs[0], key, **value)

    return edit


def with_input_parameter(key: str, **value: Any) -> Callable[[pb.ModelInferRequest], None]:
    return lambda request: parameter(request.inputs[0], key, **value)


def in_shared_memory(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]
    parameter(request.inputs[0], "shared_memory_region", string_param="nowhere")
    parameter(request.inputs[0], "shared_memory_byte_size", int64_param=16)


def load_request(model: str, **parameters: Any) -> pb.RepositoryModelLoadRequest:
    """A load request whose parameters hold `config` (str/int) and `file:` contents."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    for key, value in parameters.items():
        field = {str: "string_param", int: "int64_param", bytes: "bytes_param"}[type(value)]
        setattr(request.parameters[key], field, value)
    return request


def _call(case_id: str, rpc: str, request: Message, compare: str = "status") -> GrpcCase:
    return GrpcCase(case_id, rpc, request, compare)


VALID = [
    _call("server live", "ServerLive", pb.ServerLiveRequest(), "message"),
    _call("server ready", "ServerReady", pb.ServerReadyRequest(), "message"),
    _call("server metadata", "ServerMetadata", pb.ServerMetadataRequest(), "keys"),
    _call("model ready", "ModelReady", pb.ModelReadyRequest(name="identity"), "message"),
    _call(
        "model version ready",
        "ModelReady",
        pb.ModelReadyRequest(name="identity", version="1"),
        "message",
    ),
    _call("model metadata", "ModelMetadata", pb.ModelMetadataRequest(name="identity"), "message"),
    _call(
        "model metadata by version",
        "ModelMetadata",
        pb.ModelMetadataRequest(name="two_io", version="1"),
        "message",
    ),
    _call(
        "model metadata BYTES", "ModelMetadata", pb.ModelMetadataRequest(name="strings"), "message"
    ),
    _call("model config", "ModelConfig", pb.ModelConfigRequest(name="identity"), "message"),
    _call(
        "model config no batching", "ModelConfig", pb.ModelConfigRequest(name="nobatch"), "message"
    ),
    _call("model statistics", "ModelStatistics", pb.ModelStatisticsRequest(name="spare"), "keys"),
    _call("all statistics", "ModelStatistics", pb.ModelStatisticsRequest(), "keys"),
    _call("repository index", "RepositoryIndex", pb.RepositoryIndexRequest(), "message"),
    _call(
        "repository index ready",
        "RepositoryIndex",
        pb.RepositoryIndexRequest(ready=True),
        "message",
    ),
    _call(
        "system shm status",
        "SystemSharedMemoryStatus",
        pb.SystemSharedMemoryStatusRequest(),
        "message",
    ),
    _call(
        "system shm unregister all",
        "SystemSharedMemoryUnregister",
        pb.SystemSharedMemoryUnregisterRequest(),
        "message",
    ),
    _call(
        "system shm unregister unknown",
        "SystemSharedMemoryUnregister",
        pb.SystemSharedMemoryUnregisterRequest(name="nothing"),
        "message",
    ),
    _call(
        "cuda shm status", "CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest(), "message"
    ),
    _call(
        "cuda shm unregister all",
        "CudaSharedMemoryUnregister",
        pb.CudaSharedMemoryUnregisterRequest(),
        "message",
    ),
    infer("infer raw"),
    infer(
        "infer raw batch 8",
        inputs=[tensor("INPUT0", "FP32", [8, 4])],
        raw=[np.zeros(32, np.float32).tobytes()],
    ),
    infer("infer by version", version="1"),
    infer("infer with id", edit=lambda r: setattr(r, "id", "request-9")),
    infer("infer requested output", outputs=["OUTPUT0"]),
    infer(
        "infer typed contents",
        inputs=[tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4])],
        raw=[],
    ),
    infer("infer two inputs raw", model="two_io", inputs=TWO_IO, raw=[A_RAW, B_RAW]),
    infer(
        "infer two inputs typed",
        model="two_io",
        raw=[],
        inputs=[
            tensor("a", "FP32", [1, 3], fp32_contents=[1, 2, 3]),
            tensor("b", "INT64", [1, 3], int64_contents=[4, 5, 6]),
        ],
    ),
    infer(
        "infer one of two outputs",
        model="two_io",
        inputs=TWO_IO,
        raw=[A_RAW, B_RAW],
        outputs=["prod"],
    ),
    infer(
        "infer BYTES raw",
        model="strings",
        inputs=[tensor("INPUT0", "BYTES", [1, 2])],
        raw=[bytes_elements(b"ab", b"")],
    ),
    infer(
        "infer BYTES typed",
        model="strings",
        raw=[],
        inputs=[tensor("INPUT0", "BYTES", [1, 2], bytes_contents=[b"x", "ü".encode()])],
    ),
    infer(
        "infer BOOL typed",
        model="flags",
        raw=[],
        inputs=[tensor("INPUT0", "BOOL", [1, 2], bool_contents=[True, False])],
    ),
    infer(
        "infer INT8 typed",
        model="int8",
        raw=[],
        inputs=[tensor("INPUT0", "INT8", [1, 2], int_contents=[-5, 7])],
    ),
    infer(
        "infer FP16 raw",
        model="half",
        inputs=[tensor("INPUT0", "FP16", [1, 4])],
        raw=[np.arange(4, dtype=np.float16).tobytes()],
    ),
    infer(
        "infer no batching",
        model="nobatch",
        inputs=[tensor("INPUT0", "FP32", [2, 3])],
        raw=[np.zeros(6, np.float32).tobytes()],
    ),
    infer(
        "infer without an optional input",
        model="optional",
        inputs=[tensor("INPUT0", "FP32", [2])],
        raw=[np.ones(2, np.float32).tobytes()],
    ),
    infer(
        "infer variable dims",
        model="vardim",
        inputs=[tensor("INPUT0", "FP32", [5])],
        raw=[np.zeros(5, np.float32).tobytes()],
    ),
    infer(
        "infer custom parameters",
        edit=lambda r: (
            parameter(r, "tag", string_param="x"),
            parameter(r, "n", int64_param=3),
            parameter(r, "on", bool_param=True),
        ),
    ),
    infer("infer priority", edit=with_parameter("priority", int64_param=1)),
    infer("infer priority unsigned", edit=with_parameter("priority", uint64_param=1)),
    infer("infer timeout", edit=with_parameter("timeout", int64_param=5000000)),
    infer("classification 2", edit=with_output_parameter("classification", int64_param=2)),
    infer(
        "classification more than classes",
        edit=with_output_parameter("classification", int64_param=9),
    ),
    infer(
        "classification no labels",
        model="two_io",
        inputs=TWO_IO,
        raw=[A_RAW, B_RAW],
        outputs=["sum"],
        edit=with_output_parameter("classification", int64_param=2),
    ),
    infer(
        "binary_data output parameter ignored",
        edit=with_output_parameter("binary_data", bool_param=True),
    ),
]

BAD_INFER = [
    bad("unknown model", model="nope"),
    bad("unknown model, no inputs", model="nope", inputs=[], raw=[]),
    bad("empty model name", model=""),
    bad("unknown version", version="2"),
    bad("version zero", version="0"),
    bad("version not a number", version="one"),
    bad("version with suffix", version="1abc"),
    bad("version with spaces", version=" 1"),
    bad("version negative", version="-2"),
    bad("version -1", version="-1"),
    bad("version huge", version="99999999999999999999"),
    bad("unknown model, bad version", model="nope", version="one"),
    bad("no inputs", inputs=[], raw=[]),
    bad("input without data", raw=[]),
    bad("unknown input", inputs=[tensor("INPUT9", "FP32", [1, 4])]),
    bad("empty input name", inputs=[tensor("", "FP32", [1, 4])]),
    bad("duplicate input", inputs=[tensor("INPUT0", "FP32", [1, 4])] * 2, raw=[FLOATS4] * 2),
    bad("missing input", model="two_io", inputs=TWO_IO[:1], raw=[A_RAW]),
    bad(
        "only the optional input",
        model="optional",
        inputs=[tensor("INPUT1", "FP32", [2])],
        raw=[np.ones(2, np.float32).tobytes()],
    ),
    bad(
        "extra input",
        inputs=[tensor("INPUT0", "FP32", [1, 4]), tensor("X", "FP32", [1, 4])],
        raw=[FLOATS4, FLOATS4],
    ),
    bad("datatype mismatch", inputs=[tensor("INPUT0", "INT32", [1, 4])]),
    bad("datatype unknown", inputs=[tensor("INPUT0", "FLOAT", [1, 4])]),
    bad("datatype empty", inputs=[tensor("INPUT0", "", [1, 4])]),
    bad("datatype lower case", inputs=[tensor("INPUT0", "fp32", [1, 4])]),
    bad("datatype BF16", inputs=[tensor("INPUT0", "BF16", [1, 4])], raw=[b"\x00" * 8]),
    bad("negative dim", inputs=[tensor("INPUT0", "FP32", [-1, 4])]),
    bad("rank too small", inputs=[tensor("INPUT0", "FP32", [4])]),
    bad("rank too large", inputs=[tensor("INPUT0", "FP32", [1, 4, 1])]),
    bad("wrong dim", inputs=[tensor("INPUT0", "FP32", [1, 5])], raw=[b"\x00" * 20]),
    bad("batch above max", inputs=[tensor("INPUT0", "FP32", [9, 4])], raw=[b"\x00" * 144]),
    bad("batch zero", inputs=[tensor("INPUT0", "FP32", [0, 4])], raw=[b""]),
    bad("huge shape", inputs=[tensor("INPUT0", "FP32", [2**40, 2**40])]),
    bad("raw too short", raw=[FLOATS4[:12]]),
    bad("raw too long", raw=[FLOATS4 + b"\x00" * 4]),
    bad("raw empty", raw=[b""]),
    bad("more raw entries than inputs", raw=[FLOATS4, FLOATS4]),
    bad("fewer raw entries than inputs", model="two_io", inputs=TWO_IO, raw=[A_RAW]),
    bad(
        "raw and typed contents",
        inputs=[tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4])],
    ),
    bad(
        "typed contents wrong field",
        raw=[],
        inputs=[tensor("INPUT0", "FP32", [1, 4], int_contents=[1, 2, 3, 4])],
    ),
    bad(
        "typed contents too few",
        raw=[],
        inputs=[tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3])],
    ),
    bad(
        "typed contents too many",
        raw=[],
        inputs=[tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4, 5])],
    ),
    bad(
        "typed contents two fields",
        raw=[],
        inputs=[tensor("INPUT0", "FP32", [1, 4], fp32_contents=[1, 2, 3, 4], int_contents=[1])],
    ),
    bad(
        "typed INT8 out of range",
        model="int8",
        raw=[],
        inputs=[tensor("INPUT0", "INT8", [1, 2], int_contents=[300, 1])],
    ),
    bad(
        "typed FP16",
        model="half",
        raw=[],
        inputs=[tensor("INPUT0", "FP16", [1, 4], fp32_contents=[1, 2, 3, 4])],
    ),
    bad(
        "typed BYTES too few",
        model="strings",
        raw=[],
        inputs=[tensor("INPUT0", "BYTES", [1, 2], bytes_contents=[b"a"])],
    ),
    bad(
        "typed BYTES for FP32",
        raw=[],
        inputs=[tensor("INPUT0", "BYTES", [1, 4], bytes_contents=[b"a"] * 4)],
    ),
    bad(
        "raw BYTES truncated length",
        model="strings",
        inputs=[tensor("INPUT0", "BYTES", [1, 2])],
        raw=[bytes_elements(b"ab") + b"\x01\x00"],
    ),
    bad(
        "raw BYTES element past the end",
        model="strings",
        inputs=[tensor("INPUT0", "BYTES", [1, 2])],
        raw=[bytes_elements(b"ab") + b"\x09\x00\x00\x00"],
    ),
    bad(
        "raw BYTES too few elements",
        model="strings",
        inputs=[tensor("INPUT0", "BYTES", [1, 2])],
        raw=[bytes_elements(b"ab")],
    ),
    bad(
        "raw BYTES too many elements",
        model="strings",
        inputs=[tensor("INPUT0", "BYTES", [1, 2])],
        raw=[bytes_elements(b"a", b"b", b"c")],
    ),
    bad(
        "raw FP16 wrong size",
        model="half",
        inputs=[tensor("INPUT0", "FP16", [1, 4])],
        raw=[b"\x00" * 6],
    ),
    bad(
        "no batching with batch dim",
        model="nobatch",
        inputs=[tensor("INPUT0", "FP32", [1, 2, 3])],
        raw=[np.zeros(6, np.float32).tobytes()],
    ),
    bad(
        "batch sizes disagree",
        model="two_io",
        inputs=[tensor("a", "FP32", [1, 3]), tensor("b", "INT64", [2, 3])],
        raw=[A_RAW, B_RAW * 2],
    ),
    bad("unknown output", outputs=["OUTPUT9"]),
    bad("duplicate output", outputs=["OUTPUT0", "OUTPUT0"]),
    bad("empty output name", outputs=[""]),
    bad("classification as string", edit=with_output_parameter("classification", string_param="2")),
    bad("classification negative", edit=with_output_parameter("classification", int64_param=-1)),
    bad("classification as bool", edit=with_output_parameter("classification", bool_param=True)),
    bad("classification as double", edit=with_output_parameter("classification", double_param=1.0)),
    bad(
        "classification of FP16",
        model="half",
        inputs=[tensor("INPUT0", "FP16", [1, 4])],
        raw=[np.zeros(4, np.float16).tobytes()],
        edit=with_output_parameter("classification", int64_param=1),
    ),
    bad("priority as string", edit=with_parameter("priority", string_param="1")),
    bad("priority negative", edit=with_parameter("priority", int64_param=-1)),
    bad("priority as double", edit=with_parameter("priority", double_param=1.0)),
    bad("timeout as string", edit=with_parameter("timeout", string_param="10")),
    bad("timeout negative", edit=with_parameter("timeout", int64_param=-5)),
    bad("timeout as bool", edit=with_parameter("timeout", bool_param=True)),
    bad("reserved triton_ parameter", edit=with_parameter("triton_x", int64_param=1)),
    bad("sequence_id on a plain model", edit=with_parameter("sequence_id", int64_param=5)),
    bad("sequence_id as bool", edit=with_parameter("sequence_id", bool_param=True)),
    bad("sequence_start as string", edit=with_parameter("sequence_start", string_param="yes")),
    bad("parameter without value", edit=lambda r: r.parameters["empty"].Clear()),
    bad("shared memory input unregistered", edit=in_shared_memory),
    bad(
        "shared memory input with raw",
        edit=lambda r: (in_shared_memory(r), r.raw_input_contents.append(FLOATS4)),
    ),
    bad(
        "shared memory region without size",
        edit=lambda r: (in_shared_memory(r), r.inputs[0].parameters.pop("shared_memory_byte_size")),
    ),
    bad(
        "shared memory region as int",
        edit=with_input_parameter("shared_memory_region", int64_param=1),
    ),
    bad(
        "shared memory output unregistered",
        edit=lambda r: (
            with_output_parameter("shared_memory_region", string_param="nowhere")(r),
            with_output_parameter("shared_memory_byte_size", int64_param=16)(r),
        ),
    ),
]

BAD_CALLS = [
    _call("model ready unknown", "ModelReady", pb.ModelReadyRequest(name="nope"), "message"),
    _call(
        "model ready unknown version",
        "ModelReady",
        pb.ModelReadyRequest(name="identity", version="3"),
        "message",
    ),
    _call(
        "model ready bad version",
        "ModelReady",
        pb.ModelReadyRequest(name="identity", version="one"),
        "message",
    ),
    _call("model ready empty name", "ModelReady", pb.ModelReadyRequest(), "message"),
    _call("model ready dot-dot", "ModelReady", pb.ModelReadyRequest(name="../identity"), "message"),
    *(
        _call(f"{label} {what}", rpc, request_type(**fields))
        for label, rpc, request_type in (
            ("model metadata", "ModelMetadata", pb.ModelMetadataRequest),
            ("model config", "ModelConfig", pb.ModelConfigRequest),
            ("model statistics", "ModelStatistics", pb.ModelStatisticsRequest),
        )
        for what, fields in (
            ("unknown", {"name": "nope"}),
            ("unknown version", {"name": "identity", "version": "3"}),
            ("bad version", {"name": "identity", "version": "x"}),
            ("empty name", {}),
        )
    ),
    _call(
        "load unknown model",
        "RepositoryModelLoad",
        pb.RepositoryModelLoadRequest(model_name="nope"),
    ),
    _call("load empty name", "RepositoryModelLoad", pb.RepositoryModelLoadRequest()),
    _call(
        "load slash name", "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="a/b")
    ),
    _call(
        "load named repository",
        "RepositoryModelLoad",
        pb.RepositoryModelLoadRequest(repository_name="other", model_name="identity"),
    ),
    _call("load config as int", "RepositoryModelLoad", load_request("nope", config=5)),
    _call(
        "load config invalid JSON", "RepositoryModelLoad", load_request("nope", config="{not json")
    ),
    _call(
        "load file without config",
        "RepositoryModelLoad",
        load_request("nope", **{"file:1/model.onnx": b"x"}),
    ),
    _call(
        "unload unknown model",
        "RepositoryModelUnload",
        pb.RepositoryModelUnloadRequest(model_name="nope"),
    ),
    _call("unload empty name", "RepositoryModelUnload", pb.RepositoryModelUnloadRequest()),
    _call(
        "unload named repository",
        "RepositoryModelUnload",
        pb.RepositoryModelUnloadRequest(repository_name="other", model_name="identity"),
    ),
    _call(
        "system shm status unknown",
        "SystemSharedMemoryStatus",
        pb.SystemSharedMemoryStatusRequest(name="nothing"),
    ),
    _call(
        "system shm register missing object",
        "SystemSharedMemoryRegister",
        pb.SystemSharedMemoryRegisterRequest(name="r1", key="/parity_none", byte_size=16),
    ),
    _call(
        "system shm register empty name",
        "SystemSharedMemoryRegister",
        pb.SystemSharedMemoryRegisterRequest(key="/parity_none", byte_size=16),
    ),
    _call(
        "system shm register empty key",
        "SystemSharedMemoryRegister",
        pb.SystemSharedMemoryRegisterRequest(name="r1", byte_size=16),
    ),
    _call(
        "system shm register zero size",
        "SystemSharedMemoryRegister",
        pb.SystemSharedMemoryRegisterRequest(name="r1", key="/parity_none"),
    ),
    _call(
        "cuda shm status unknown",
        "CudaSharedMemoryStatus",
        pb.CudaSharedMemoryStatusRequest(name="nothing"),
    ),
    _call(
        "cuda shm register",
        "CudaSharedMemoryRegister",
        pb.CudaSharedMemoryRegisterRequest(name="r1", raw_handle=b"x", byte_size=16),
    ),
    _call(
        "cuda shm unregister unknown",
        "CudaSharedMemoryUnregister",
        pb.CudaSharedMemoryUnregisterRequest(name="nothing"),
        "message",
    ),
    _call("trace setting", "TraceSetting", pb.TraceSettingRequest()),
    _call("log settings", "LogSettings", pb.LogSettingsRequest()),
    GrpcCase("unparsable infer message", "ModelInfer", b"\xff\xff\xff\xff"),
    GrpcCase("unparsable metadata message", "ModelMetadata", b"\x0a\xff"),
    GrpcCase("unknown method", "", b"", path=SERVICE + "NoSuchMethod"),
    GrpcCase("unknown service", "", b"", path="/inference.NoSuchService/ModelInfer"),
    GrpcCase("lower-case method", "", b"", path=SERVICE + "modelinfer"),
]

# Calls sent to ferry alone, because they harm the oracle: (row, ferry's code, why).
FERRY_ONLY = [
    (
        _call(
            "load dot-dot name",
            "RepositoryModelLoad",
            pb.RepositoryModelLoadRequest(model_name=".."),
        ),
        "INVALID_ARGUMENT",
        TRITON_LOADS_PARENT,
    ),
]

BAD = BAD_INFER + BAD_CALLS
CASES = VALID + BAD
