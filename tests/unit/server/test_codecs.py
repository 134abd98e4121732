"""Wire codecs: the binary tensor extension, BYTES framing, compression, gRPC raw contents."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from server.errors import ServingError
from server.protocol import grpc_codec
from server.protocol.http_codec import (
    OutputEncoding,
    choose_response_encoding,
    compress,
    decode_request,
    encode_response,
)
from server.protocol.inflate import decompress
from server.protocol.tensors import array_from_bytes, array_to_bytes
from server.types import InferenceResponse


def test_bytes_framing_matches_tritonclient() -> None:
    data = np.array([b"a", b"", "ünï".encode(), b"\x00\x01"], dtype=np.object_)
    assert array_to_bytes(data) == serialize_byte_tensor(data).item()
    decoded = array_from_bytes("t", serialize_byte_tensor(data).item(), "BYTES", (2, 2))
    assert decoded.tolist() == data.reshape(2, 2).tolist()
    assert deserialize_bytes_tensor(array_to_bytes(decoded)).tolist() == data.tolist()


def test_binary_request_and_response_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps(
        {
            "id": "7",
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                }
            ],
            "outputs": [
                {"name": "y", "parameters": {"binary_data": True}},
                {"name": "z", "parameters": {"binary_data": False}},
            ],
            "parameters": {"priority": 2, "timeout": 300},
        }
    ).encode()
    request, encoding = decode_request(header + x.tobytes(), len(header), "m", "")
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.priority == 2 and request.timeout_us == 300 and request.id == "7"
    outputs = {"y": x * 2, "z": np.array([1, 2], dtype=np.int64)}
    body, json_length = encode_response(InferenceResponse("m", "1", outputs, "7"), encoding)
    assert json_length is not None
    head = json.loads(body[:json_length])
    assert head["model_version"] == "1" and head["id"] == "7"
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert head["outputs"][1]["data"] == [1, 2]
    np.testing.assert_array_equal(
        np.frombuffer(body[json_length:], np.float32).reshape(2, 3), x * 2
    )


def test_fp16_output_needs_binary() -> None:
    response = InferenceResponse("m", "1", {"y": np.zeros(2, np.float16)})
    with pytest.raises(ServingError, match="FP16"):
        encode_response(response, OutputEncoding(False, {}))
    body, length = encode_response(response, OutputEncoding(True, {}))
    assert length is not None and len(body) == length + 4


def test_accept_encoding_choice() -> None:
    assert choose_response_encoding("gzip, deflate") == "gzip"
    assert choose_response_encoding("deflate, gzip") == "deflate"
    assert choose_response_encoding("gzip;q=0.5, deflate;q=0.8") == "deflate"
    assert choose_response_encoding("br, zstd") is None
    assert choose_response_encoding("gzip;q=0") is None
    assert choose_response_encoding(None) is None


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_decompress_is_bounded(algorithm: str) -> None:
    data = b"x" * 10_000
    assert decompress(compress(data, algorithm), algorithm, 20_000, "--flag") == data
    with pytest.raises(ServingError, match=r"maximum allowed value of 5000 bytes\. Use --flag"):
        decompress(compress(data, algorithm), algorithm, 5_000, "--flag")


def test_grpc_request_decoding() -> None:
    message = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="q")
    message.inputs.add(name="x", datatype="INT32", shape=[1, 2])
    message.raw_input_contents.append(np.array([[3, 4]], dtype=np.int32).tobytes())
    message.parameters["priority"].uint64_param = 1
    message.parameters["timeout"].int64_param = 50
    message.parameters["custom"].string_param = "v"
    message.outputs.add(name="y").parameters["classification"].int64_param = 2
    request, in_shared_memory = grpc_codec.decode_request(message)
    assert not in_shared_memory
    assert request.inputs["x"].tolist() == [[3, 4]] and request.protocol == "grpc"
    assert request.priority == 1 and request.timeout_us == 50
    assert request.parameters == {"custom": "v"}
    assert request.requested_outputs is not None
    assert request.requested_outputs[0].classification == 2
    message.parameters["triton_nope"].bool_param = True
    with pytest.raises(ServingError, match="reserved"):
        grpc_codec.decode_request(message)


def test_grpc_response_raw_outputs_are_index_aligned() -> None:
    outputs = {
        "a": np.ones((1, 2), np.float32),
        "b": np.array([b"s"], dtype=np.object_),
        "c": np.zeros((0, 3), np.float32),
    }
    message = grpc_codec.encode_response(InferenceResponse("m", "1", outputs))
    assert [o.name for o in message.outputs] == ["a", "b", "c"]
    assert len(message.raw_output_contents) == 3
    assert message.raw_output_contents[2] == b""
    assert message.outputs[1].datatype == "BYTES"
