"""Triton's rules the differential suite (tests/integration/parity) found ferry missing, pinned
here so they hold without a tritonserver: version strings, JSON value types, NaN literals,
request parameters, gRPC typed contents and load parameters."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from server.errors import ErrorKind, ServingError
from server.protocol import grpc_codec
from server.protocol.http_codec import decode_request
from server.protocol.tensors import array_from_json, raw_element_count
from server.repository import parse_version


@pytest.mark.parametrize(
    ("text", "number"), [("", None), ("1", 1), ("0", 0), ("1abc", 1), (" 7", 7), ("+3", 3)]
)
def test_versions_parse_as_triton_parses_them(text: str, number: int | None) -> None:
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["one", "-1", "-2", "99999999999999999999", " ", "x1"])
def test_bad_versions_are_invalid_arguments(text: str) -> None:
    with pytest.raises(ServingError) as error:
        parse_version(text)
    assert error.value.kind == ErrorKind.INVALID_ARG
    assert "version should be an integral value > 0" in error.value.message


def one_input(datatype: str, data: Any, shape: list[int] | None = None, **extra: Any) -> bytes:
    tensor = {"name": "x", "shape": shape or [len(data)], "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", ["1", "2"]),
        ("FP32", [1, None]),
        ("FP32", [True, False]),
        ("INT64", [1.5, 2]),
        ("INT8", [300, 1]),
        ("UINT8", [-1, 1]),
        ("BOOL", [1, 0]),
        ("BOOL", ["true", "false"]),
        ("BYTES", [1, 2]),
        ("BYTES", ["a", None]),
    ],
)
def test_json_values_of_another_type_are_refused(datatype: str, data: list[Any]) -> None:
    with pytest.raises(ServingError) as error:
        decode_request(one_input(datatype, data), None, "m", "")
    assert error.value.kind == ErrorKind.INVALID_ARG


def test_json_values_of_the_right_type_are_taken() -> None:
    assert array_from_json("x", [1, 2.5], "FP32", (2,)).dtype == np.float32
    assert array_from_json("x", [-128, 127], "INT8", (2,)).tolist() == [-128, 127]
    assert array_from_json("x", [[True], [False]], "BOOL", (2, 1)).tolist() == [[True], [False]]
    assert array_from_json("x", ["a", "ü"], "BYTES", (2,)).tolist() == [b"a", "ü".encode()]
    with pytest.raises(ServingError, match="must be a JSON array"):
        array_from_json("x", 1, "FP32", (1,))


def test_nan_and_infinity_literals_are_accepted_as_in_triton() -> None:
    body = (
        b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", '
        b'"data": [NaN, Infinity, -Infinity]}]}'
    )
    request, _ = decode_request(body, None, "m", "")
    values = request.inputs["x"]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf


def test_an_empty_outputs_list_asks_for_every_output() -> None:
    request, _ = decode_request(one_input("FP32", [1.0], outputs=[]), None, "m", "")
    assert request.requested_outputs is None


@pytest.mark.parametrize(
    "parameters",
    [
        {"binary_data_output": "yes"},
        {"sequence_id": [1]},
        {"sequence_id": True},
        {"sequence_start": 1},
        {"tag": None},
        {"tag": {"a": 1}},
    ],
)
def test_parameters_of_the_wrong_type_are_refused(parameters: dict[str, Any]) -> None:
    with pytest.raises(ServingError) as error:
        decode_request(one_input("FP32", [1.0], parameters=parameters), None, "m", "")
    assert error.value.kind == ErrorKind.INVALID_ARG


def test_a_request_id_must_be_a_string() -> None:
    with pytest.raises(ServingError, match="'id' must be a string"):
        decode_request(one_input("FP32", [1.0], id=7), None, "m", "")


def test_raw_element_count() -> None:
    assert raw_element_count("x", np.zeros(6, np.float32).tobytes(), "FP32") == 6
    with pytest.raises(ServingError, match="whole number"):
        raw_element_count("x", b"\x00" * 5, "FP32")


def grpc_request(**contents: list[Any]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2])
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def test_grpc_typed_contents_of_another_datatype_are_refused() -> None:
    request, _ = grpc_codec.decode_request(grpc_request(fp32_contents=[1, 2]))
    assert request.inputs["x"].tolist() == [1.0, 2.0]
    with pytest.raises(ServingError, match="unexpected explicit tensor data"):
        grpc_codec.decode_request(grpc_request(fp32_contents=[1, 2], int_contents=[1]))


@pytest.mark.parametrize(
    ("key", "choice", "value"),
    [
        ("sequence_id", "bool_param", True),
        ("sequence_start", "string_param", "yes"),
        ("sequence_end", "int64_param", 1),
        ("custom", None, None),
    ],
)
def test_grpc_parameters_of_the_wrong_choice_are_refused(
    key: str, choice: str | None, value: Any
) -> None:
    request = grpc_request(fp32_contents=[1, 2])
    if choice is None:
        request.parameters[key].Clear()  # present, with no value
    else:
        setattr(request.parameters[key], choice, value)
    with pytest.raises(ServingError, match=f"invalid value type for '{key}' parameter"):
        grpc_codec.decode_request(request)


def test_grpc_load_parameters_must_have_their_types() -> None:
    parameters = pb.RepositoryModelLoadRequest().parameters
    parameters["config"].string_param = "{}"
    parameters["file:1/model.onnx"].bytes_param = b"onnx"
    assert grpc_codec.load_parameters(parameters) == ("{}", {"1/model.onnx": b"onnx"})
    parameters["config"].int64_param = 5
    with pytest.raises(ServingError, match="load parameter 'config', expected string_param"):
        grpc_codec.load_parameters(parameters)
    parameters["config"].string_param = "{}"
    parameters["file:1/model.onnx"].string_param = "onnx"
    with pytest.raises(ServingError, match="expected bytes_param"):
        grpc_codec.load_parameters(parameters)


def spec_model(max_batch_size: int = 0) -> Any:
    """What validate_request reads of a model version: two inputs, INPUT1 optional."""
    from types import SimpleNamespace

    from server.types import TensorSpec

    return SimpleNamespace(
        name="m",
        max_batch_size=max_batch_size,
        utf8_strings=False,
        inputs={
            "INPUT0": TensorSpec("INPUT0", "FP32", (2,)),
            "INPUT1": TensorSpec("INPUT1", "FP32", (2,), optional=True),
        },
        outputs={"OUTPUT0": TensorSpec("OUTPUT0", "FP32", (2,))},
    )


def request_of(*names: str, outputs: tuple[str, ...] = ()) -> Any:
    from server.types import InferenceRequest, RequestedOutput

    requested = tuple(RequestedOutput(n) for n in outputs) or None
    tensors = {n: np.zeros(2, np.float32) for n in names}
    return InferenceRequest("m", "", tensors, requested_outputs=requested)


def test_optional_inputs_may_be_left_out_required_ones_may_not() -> None:
    from server.dataplane import validate_request

    assert validate_request(spec_model(), request_of("INPUT0")) == 1
    assert validate_request(spec_model(), request_of("INPUT0", "INPUT1")) == 1
    with pytest.raises(ServingError) as error:
        validate_request(spec_model(), request_of("INPUT1"))
    assert error.value.message == (
        "expected number of inputs between 1 and 2 but got 1 inputs for model 'm'. Got "
        "input(s) ['INPUT1'], but missing required input(s) ['INPUT0']. Please provide all "
        "required input(s)."
    )


def test_a_requested_output_named_twice_is_refused() -> None:
    from server.dataplane import validate_request

    with pytest.raises(ServingError, match="output 'OUTPUT0' already exists in request"):
        validate_request(spec_model(), request_of("INPUT0", outputs=("OUTPUT0", "OUTPUT0")))


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "Model name cannot be empty"),
        (" \t", "Model name cannot be empty"),
        ("..", "must not contain path traversal characters"),
        ("a/../b", "must not contain path traversal characters"),
        (" ..", "must not contain path traversal characters"),
        ("model/", "must not contain path traversal characters"),
        (".hidden", "not starting with '.'"),
    ],
)
def test_model_names_are_refused_with_triton_words(name: str, fragment: str) -> None:
    from server.repository import invalid_name_message
    from server.repository_format import is_valid_model_name

    assert not is_valid_model_name(name)
    assert fragment in invalid_name_message(name)


def test_element_counts_beyond_int64_are_refused() -> None:
    from server.protocol.tensors import checked_count

    assert checked_count("x", (2, 3), "FP32") == 6
    with pytest.raises(ServingError, match="causes total element count to exceed maximum size"):
        checked_count("x", (2**4, 2**60 + 2), "FP32")
    with pytest.raises(ServingError, match="byte size overflow for input 'x'"):
        checked_count("x", (2**2, 2**60 + 2), "FP32")
