"""Both codecs with tensors in client shared memory: inputs read at decode, outputs written at
encode, and the extension's rejections (off, classification, binary_data, index alignment)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from server.errors import ErrorKind, ServingError
from server.protocol import grpc_codec, http_codec
from server.shared_memory import SharedMemoryManager
from server.types import InferenceResponse
from tests.support.shared_memory import ClientRegion, client_region, shm


@pytest.fixture
def region() -> Iterator[ClientRegion]:
    with client_region(256) as created:
        yield created


@pytest.fixture
def manager(region: ClientRegion) -> Iterator[SharedMemoryManager]:
    manager = SharedMemoryManager()
    manager.register("in", region.key, 0, 128)
    manager.register("out", region.key, 128, 128)
    yield manager
    manager.close()


def http_body(
    inputs: list[dict], outputs: list[dict] | None = None, blob: bytes = b""
) -> tuple[bytes, int]:
    header = json.dumps({"inputs": inputs, **({"outputs": outputs} if outputs else {})}).encode()
    return header + blob, len(header)


def test_http_inputs_and_outputs_in_shared_memory(
    region: ClientRegion, manager: SharedMemoryManager
) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = np.array([b"ab", b"", b"xyz"], dtype=np.object_)
    serialized = serialize_byte_tensor(text)
    shm.set_shared_memory_region(region.handle, [x, serialized])
    y = np.full(2, 9, dtype=np.int64)
    body, length = http_body(
        [
            {
                "name": "x",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 24},
            },
            {
                "name": "y",
                "shape": [2],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 16},
            },
            {
                "name": "t",
                "shape": [3],
                "datatype": "BYTES",
                "parameters": {
                    "shared_memory_region": "in",
                    "shared_memory_offset": 24,
                    "shared_memory_byte_size": serialized.item().__len__(),
                },
            },
        ],
        [
            {
                "name": "a",
                "parameters": {
                    "shared_memory_region": "out",
                    "binary_data": False,
                    "shared_memory_byte_size": 24,
                },
            },
            {"name": "b", "parameters": {"binary_data": True}},
            {
                "name": "s",
                "parameters": {
                    "shared_memory_region": "out",
                    "shared_memory_offset": 32,
                    "shared_memory_byte_size": 64,
                },
            },
        ],
        y.tobytes(),
    )
    request, encoding = http_codec.decode_request(body, length, "m", "", manager)
    assert request.inputs["x"].tolist() == x.tolist()
    assert request.inputs["y"].tolist() == y.tolist()  # the binary part skips shm inputs
    assert request.inputs["t"].tolist() == text.tolist()
    assert set(encoding.shared_memory_by_output) == {"a", "s"}

    outputs = {"a": x * 2, "b": y, "s": text}
    payload, json_length = http_codec.encode_response(
        InferenceResponse("m", "1", outputs), encoding, manager
    )
    assert json_length is not None
    header = json.loads(payload[:json_length])
    assert header["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 24},
    }
    assert header["outputs"][2]["parameters"] == {
        "shared_memory_region": "out",
        "shared_memory_byte_size": len(serialized.item()),
        "shared_memory_offset": 32,
    }
    assert "data" not in header["outputs"][0] and "data" not in header["outputs"][2]
    assert payload[json_length:] == y.tobytes()  # only the binary output has bytes
    assert (
        shm.get_contents_as_numpy(region.handle, np.float32, [2, 3], 128).tolist()
        == (x * 2).tolist()
    )
    assert shm.get_contents_as_numpy(region.handle, np.object_, [3], 160).tolist() == text.tolist()


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"classification": 2}, "can't set both 'shared_memory_region' and 'classification'"),
        ({"binary_data": True}, "can't set both 'shared_memory_region' and 'binary_data'"),
        ({"shared_memory_byte_size": 8, "shared_memory_offset": 124}, "Invalid offset + byte size"),
    ],
)
def test_http_output_rejections(manager: SharedMemoryManager, params: dict, fragment: str) -> None:
    body, length = http_body(
        [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        [{"name": "a", "parameters": {"shared_memory_region": "out", **params}}],
    )
    with pytest.raises(ServingError) as error:
        http_codec.decode_request(body, length, "m", "", manager)
    assert error.value.kind == ErrorKind.INVALID_ARG and fragment in error.value.message


def test_http_output_region_too_small_or_gone(manager: SharedMemoryManager) -> None:
    body, length = http_body(
        [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        [
            {
                "name": "a",
                "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 8},
            }
        ],
    )
    _, encoding = http_codec.decode_request(body, length, "m", "", manager)
    response = InferenceResponse("m", "1", {"a": np.zeros(3, np.float32)})
    with pytest.raises(ServingError, match=r"output 'a' \(8 bytes\) should be at least 12"):
        http_codec.encode_response(response, encoding, manager)
    manager.unregister("out")  # between decode and encode, as a client could
    response = InferenceResponse("m", "1", {"a": np.zeros(2, np.float32)})
    with pytest.raises(ServingError, match="Unable to find shared memory region: 'out'"):
        http_codec.encode_response(response, encoding, manager)


def test_http_input_rules(manager: SharedMemoryManager) -> None:
    shm_input = {
        "name": "x",
        "shape": [1],
        "datatype": "FP32",
        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4},
    }
    with pytest.raises(ServingError, match="must set only one of"):
        http_codec.decode_request(*http_body([{**shm_input, "data": [1.0]}]), "m", "", manager)
    with pytest.raises(ServingError, match=r"input byte size mismatch .*Expected 8, got 4"):
        http_codec.decode_request(*http_body([{**shm_input, "shape": [2]}]), "m", "", manager)
    unknown = {
        **shm_input,
        "parameters": {"shared_memory_region": "nope", "shared_memory_byte_size": 4},
    }
    with pytest.raises(ServingError, match="Unable to find shared memory region: 'nope'"):
        http_codec.decode_request(*http_body([unknown]), "m", "", manager)


def test_http_shared_memory_is_unsupported_when_off() -> None:
    shm_input = {
        "name": "x",
        "shape": [1],
        "datatype": "FP32",
        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4},
    }
    plain = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    shm_output = {
        "name": "a",
        "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 4},
    }
    for body, length in (http_body([shm_input]), http_body([plain], [shm_output])):
        with pytest.raises(ServingError) as error:
            http_codec.decode_request(body, length, "m", "")
        assert error.value.kind == ErrorKind.UNSUPPORTED


def grpc_shm(
    tensor: service_pb2.ModelInferRequest.InferInputTensor
    | service_pb2.ModelInferRequest.InferRequestedOutputTensor,
    region: str,
    byte_size: int,
    offset: int = 0,
) -> None:
    """What tritonclient.grpc's set_shared_memory sends."""
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    if offset:
        tensor.parameters["shared_memory_offset"].int64_param = offset


def test_grpc_raw_contents_skip_shared_memory_inputs(
    region: ClientRegion, manager: SharedMemoryManager
) -> None:
    a, b, c = (np.full((1, 2), v, np.int32) for v in (1, 2, 3))
    shm.set_shared_memory_region(region.handle, [b], offset=8)
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="a", datatype="INT32", shape=[1, 2])
    grpc_shm(message.inputs.add(name="b", datatype="INT32", shape=[1, 2]), "in", 8, 8)
    message.inputs.add(name="c", datatype="INT32", shape=[1, 2])
    message.raw_input_contents.extend([a.tobytes(), c.tobytes()])
    grpc_shm(message.outputs.add(name="p"), "out", 16, 4)
    message.outputs.add(name="q")
    request, in_shared_memory = grpc_codec.decode_request(message, manager)
    assert {k: v.tolist() for k, v in request.inputs.items()} == {
        "a": [[1, 1]],
        "b": [[2, 2]],
        "c": [[3, 3]],
    }
    assert set(in_shared_memory) == {"p"}

    outputs = {"p": np.array([4, 5], np.int64), "q": np.array([6.5], np.float32)}
    response = grpc_codec.encode_response(
        InferenceResponse("m", "1", outputs), in_shared_memory, manager
    )
    assert list(response.raw_output_contents) == [b"", outputs["q"].tobytes()]  # aligned
    params = response.outputs[0].parameters
    assert params["shared_memory_region"].string_param == "out"
    assert params["shared_memory_byte_size"].int64_param == 16
    assert params["shared_memory_offset"].int64_param == 4
    assert shm.get_contents_as_numpy(region.handle, np.int64, [2], 132).tolist() == [4, 5]

    message.raw_input_contents.append(c.tobytes())  # one entry too many
    with pytest.raises(ServingError, match="expected 2 raw_input_contents entries"):
        grpc_codec.decode_request(message, manager)


def test_grpc_rejections(manager: SharedMemoryManager) -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    grpc_shm(message.inputs.add(name="a", datatype="INT32", shape=[1]), "in", 4)
    with pytest.raises(ServingError) as off:
        grpc_codec.decode_request(message)
    assert off.value.kind == ErrorKind.UNSUPPORTED
    message.inputs[0].contents.int_contents.append(1)
    with pytest.raises(ServingError, match="unexpected 'content' provided"):
        grpc_codec.decode_request(message, manager)
    message.inputs[0].ClearField("contents")
    output = message.outputs.add(name="p")
    grpc_shm(output, "out", 4)
    output.parameters["classification"].int64_param = 2
    with pytest.raises(
        ServingError, match="can't set both 'shared_memory_region' and 'classification'"
    ):
        grpc_codec.decode_request(message, manager)
    with pytest.raises(ServingError) as output_off:
        grpc_codec.decode_request(message)
    assert output_off.value.kind == ErrorKind.UNSUPPORTED
    del output.parameters["classification"]
    output.parameters["shared_memory_byte_size"].string_param = "4"
    with pytest.raises(ServingError, match="invalid value for 'shared_memory_byte_size'"):
        grpc_codec.decode_request(message, manager)
