"""Bad input as a corpus: each case gets a clear error with Triton's status code, and the
server stays healthy and correct afterwards."""

from __future__ import annotations

import gzip
import http.client
import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.server_process import ServerProcess

GOOD_INPUT = {"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}


def infer_body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(header: dict, blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


FLOATS16 = np.zeros(16, dtype=np.float32).tobytes()

# (case, path, body, headers, expected status, fragment of the error message)
CASES = [
    ("malformed JSON", "mlp", b'{"inputs": [', {}, 400, "failed to parse"),
    ("garbage", "mlp", b"\x00\x01\x02garbage\xff", {}, 400, "failed to parse"),
    ("JSON that is not an object", "mlp", b"[1, 2, 3]", {}, 400, "must be an object"),
    ("no inputs", "mlp", b"{}", {}, 400, "inputs"),
    ("unknown model", "nope", infer_body(GOOD_INPUT), {}, 404, "unknown model"),
    ("unknown version", "mlp/versions/42", infer_body(GOOD_INPUT), {}, 404, "version 42"),
    (
        "missing input",
        "two_io",
        infer_body({"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}),
        {},
        400,
        "missing required input(s) ['b']",
    ),
    (
        "extra input",
        "mlp",
        infer_body(GOOD_INPUT, {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}),
        {},
        400,
        "unexpected inference input 'extra'",
    ),
    (
        "misnamed input",
        "mlp",
        infer_body({**GOOD_INPUT, "name": "inptu"}),
        {},
        400,
        "unexpected inference input 'inptu'",
    ),
    (
        "wrong datatype",
        "mlp",
        infer_body({**GOOD_INPUT, "datatype": "INT32", "data": [1] * 16}),
        {},
        400,
        "expects 'FP32'",
    ),
    (
        "invalid datatype",
        "mlp",
        infer_body({**GOOD_INPUT, "datatype": "FLOAT"}),
        {},
        400,
        "invalid datatype",
    ),
    (
        "wrong shape",
        "mlp",
        infer_body({**GOOD_INPUT, "shape": [2, 8]}),
        {},
        400,
        "unexpected shape",
    ),
    (
        "element count does not match shape",
        "mlp",
        infer_body({**GOOD_INPUT, "data": [0.1] * 15}),
        {},
        400,
        "expecting 16",
    ),
    (
        "batch above max_batch_size",
        "mlp",
        infer_body({**GOOD_INPUT, "shape": [5, 16], "data": [0.1] * 80}),
        {},
        400,
        "batch-size must be <= 4",
    ),
    (
        "negative dims",
        "mlp",
        infer_body({**GOOD_INPUT, "shape": [-1, 16]}),
        {},
        400,
        "non-negative",
    ),
    (
        "absurd dims",
        "mlp",
        infer_body({**GOOD_INPUT, "shape": [2**40, 2**40]}),
        {},
        400,
        "exceed maximum size",  # Triton checks the element count before --http-max-input-size
    ),
    (
        "data and binary_data_size both set",
        "mlp",
        infer_body({**GOOD_INPUT, "parameters": {"binary_data_size": 64}}),
        {},
        400,
        "only one of",
    ),
    (
        "FP16 as JSON",
        "mlp",
        infer_body({**GOOD_INPUT, "datatype": "FP16"}),
        {},
        400,
        "binary format",
    ),
    (
        "reserved triton_ parameter",
        "mlp",
        infer_body(GOOD_INPUT, parameters={"triton_secret": 1}),
        {},
        400,
        "reserved",
    ),
    (
        "header length larger than the body",
        "mlp",
        b"{}",
        {"Inference-Header-Content-Length": "999"},
        400,
        "inference header size",
    ),
    (
        "unsupported content encoding",
        "mlp",
        infer_body(GOOD_INPUT),
        {"Content-Encoding": "br"},
        501,
        "Content-Encoding",
    ),
    ("body over the size limit", "mlp", b"x" * ((1 << 20) + 10), {}, 413, "maximum"),
    (
        "gzip bomb",
        "mlp",
        gzip.compress(b" " * (4 << 20)),
        {"Content-Encoding": "gzip"},
        400,
        "maximum",
    ),
]
BINARY_CASES = [
    (
        "binary size larger than the rest of the body",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 128},
                }
            ]
        },
        FLOATS16,
        "additional bytes",
    ),
    (
        "binary size inconsistent with the shape",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 60},
                }
            ]
        },
        FLOATS16[:60],
        "Expected 64, got 60",
    ),
    (
        "trailing bytes after the last input",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64},
                }
            ]
        },
        FLOATS16 + b"xx",
        "additional input data",
    ),
    (
        "truncated BYTES element",
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1, 2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 6},
                }
            ]
        },
        b"\x05\x00\x00\x00ab",
        "runs past",
    ),
]


def post(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object], http.client.HTTPResponse]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{path}/infer", body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    return response.status, json.loads(payload), response


@pytest.mark.parametrize(
    ("case", "path", "body", "headers", "status", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_http_request(
    server: ServerProcess,
    case: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    got_status, error, response = post(server, path, body, headers)
    assert got_status == status, error
    assert fragment in error["error"], error
    if status == 501:
        assert response.headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("case", "header", "blob", "fragment"), BINARY_CASES, ids=[c[0] for c in BINARY_CASES]
)
def test_bad_binary_request(
    server: ServerProcess, case: str, header: dict, blob: bytes, fragment: str
) -> None:
    body, headers = binary_body(header, blob)
    model = "strings" if header["inputs"][0]["name"] == "text" else "mlp"
    status, error, _ = post(server, model, body, headers)
    assert status == 400, error
    assert fragment in error["error"], error


def test_bad_grpc_requests(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def call(request: service_pb2.ModelInferRequest) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request)
            return error.value

        request = service_pb2.ModelInferRequest(model_name="mlp")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(b"\x00" * 10)
        error = call(request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input byte size mismatch" in error.details() and "Expected 64" in error.details()
        tensor.contents.fp32_contents.extend([0.0] * 16)
        assert "must not be specified" in call(request).details()
        no_data = service_pb2.ModelInferRequest(model_name="mlp")
        no_data.inputs.add(name="input", datatype="FP32", shape=[1, 16])
        assert "has no data" in call(no_data).details()
        typed = service_pb2.ModelInferRequest(model_name="mlp")
        typed.inputs.add(
            name="input", datatype="FP32", shape=[1, 16]
        ).contents.fp32_contents.extend([0.5] * 16)
        assert len(stub.ModelInfer(typed).raw_output_contents[0]) == 16  # typed contents work


def test_server_still_healthy_and_correct(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_ready()
    x = np.zeros((1, 16), dtype=np.float32)
    infer_input = grpcclient.InferInput("input", [1, 16], "FP32")
    infer_input.set_data_from_numpy(x)
    assert client.infer("mlp", [infer_input]).as_numpy("output").shape == (1, 4)
    assert server.process.poll() is None
