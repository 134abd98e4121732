"""Model description, input building and request encoding, checked by decoding what was built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from measure.inputs import build_inputs, parse_shapes
from measure.model_info import BenchError, parse_model
from measure.requests import RequestSet, Sequence

METADATA = {
    "name": "m",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
    ],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}
CONFIG = {
    "max_batch_size": 8,
    "input": [
        {"name": "x", "dims": ["-1"]},
        {"name": "ids", "dims": ["3"]},
        {"name": "text", "dims": ["1"]},
    ],
    "output": [{"name": "y", "dims": ["2"]}],
}


def test_model_from_metadata_and_config() -> None:
    model = parse_model("m", METADATA, CONFIG)
    assert model.max_batch_size == 8 and not model.sequence and model.has_config
    assert [t.dims for t in model.inputs] == [(-1,), (3,), (1,)]
    # MLServer/KServe answer no config: inputs all leading with -1 batch
    bare = parse_model("m", METADATA, None)
    assert bare.max_batch_size == -1 and [t.dims for t in bare.inputs] == [(-1,), (3,), (1,)]
    sequence = parse_model("m", METADATA, {**CONFIG, "sequence_batching": {}})
    assert sequence.sequence


def test_dynamic_dims_need_a_shape() -> None:
    model = parse_model("m", METADATA, CONFIG)
    with pytest.raises(BenchError, match="--shape x:DIMS"):
        build_inputs(model, "random", {}, 1)
    inputs = build_inputs(model, "random", parse_shapes(["x:5"]), 2)
    first = inputs.requests[0]
    assert first["x"].shape == (2, 5) and first["x"].dtype == np.float32
    assert first["ids"].shape == (2, 3) and first["ids"].dtype == np.int64
    assert first["text"].dtype == np.object_ and len(first["text"][0, 0]) == 8
    with pytest.raises(BenchError, match="max_batch_size 8"):
        build_inputs(model, "random", parse_shapes(["x:5"]), 9)
    with pytest.raises(BenchError, match="unknown input"):
        build_inputs(model, "random", parse_shapes(["nope:5"]), 1)
    for bad in ("x", "x:", "x:a", ":3"):
        with pytest.raises(BenchError):
            parse_shapes([bad])


def test_inputs_from_an_npz_take_batch_size_rows(tmp_path: Path) -> None:
    model = parse_model("m", METADATA, CONFIG)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        x=np.arange(40, dtype=np.float64).reshape(10, 4),
        ids=np.zeros((10, 3), np.int32),
        text=np.array([["a"]] * 10),
    )
    inputs = build_inputs(model, str(data), {}, 3)
    assert len(inputs.requests) == 3  # 10 rows // 3
    assert inputs.requests[1]["x"].tolist() == np.arange(12, 24).reshape(3, 4).tolist()
    assert (
        inputs.requests[0]["x"].dtype == np.float32 and inputs.requests[0]["ids"].dtype == np.int64
    )
    np.savez(data, x=np.zeros((2, 4)))
    with pytest.raises(BenchError, match="no array for input"):
        build_inputs(model, str(data), {}, 1)


def test_http_binary_json_and_grpc_encodings() -> None:
    model = parse_model("m", METADATA, CONFIG)
    inputs = build_inputs(model, "zero", parse_shapes(["x:2"]), 1)
    binary = RequestSet(model, inputs, "http", True, "h:1").payload(0)
    head, _, body = binary.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h:1")
    header_length = int(head.split(b"Inference-Header-Content-Length: ")[1].split(b"\r\n")[0])
    header = json.loads(body[:header_length])
    assert header["parameters"] == {"binary_data_output": True}
    sizes = [i["parameters"]["binary_data_size"] for i in header["inputs"]]
    assert sizes == [8, 24, 5] and len(body) == header_length + sum(sizes)
    assert int(head.split(b"Content-Length: ")[-1].split(b"\r\n")[0]) == len(body)

    as_json = RequestSet(model, inputs, "http", False, "h:1").payload(0)
    decoded = json.loads(as_json.partition(b"\r\n\r\n")[2])
    assert decoded["inputs"][0] == {
        "name": "x",
        "shape": [1, 2],
        "datatype": "FP32",
        "data": [0.0, 0.0],
    }
    assert decoded["inputs"][2]["data"] == ["0"]

    grpc = RequestSet(model, inputs, "grpc", True, "h:1")
    message = grpc.payload(0)
    assert message[0] == 0 and int.from_bytes(message[1:5], "big") == len(message) - 5
    request = pb.ModelInferRequest.FromString(message[5:])
    assert request.model_name == "m" and [i.name for i in request.inputs] == ["x", "ids", "text"]
    assert request.raw_input_contents[2] == b"\x01\x00\x00\x000"
    sequenced = pb.ModelInferRequest.FromString(grpc.payload(0, Sequence(7, True, False))[5:])
    assert sequenced.parameters["sequence_id"].int64_param == 7
    assert sequenced.parameters["sequence_start"].bool_param


def test_http_response_parsing_keep_alive_and_chunked() -> None:
    import asyncio

    from measure.http_client import HttpConnection

    async def scenario() -> list[tuple[int, bytes]]:
        answers: list[tuple[int, bytes]] = []
        connection = HttpConnection(lambda _, status, body: answers.append((status, body)))
        connection.busy = True
        stream = (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc"
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nfull\r\n6\r\n queue\r\n0\r\n\r\n"
        )
        for index in range(0, len(stream), 7):  # arrives in pieces
            connection.data_received(stream[index : index + 7])
        return answers

    assert asyncio.run(scenario()) == [(200, b""), (503, b"full queue")]
