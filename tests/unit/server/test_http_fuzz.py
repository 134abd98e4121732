"""Hypothesis fuzzing of the HTTP v2 codec: `decode_request` (JSON and the binary tensor data
extension), the BYTES codec and the response encoder, against the real tritonclient's encoder
and decoder. Any input either decodes or raises ServingError: never another exception.

`make test` runs each for a bounded number of examples; `make fuzz` (HYPOTHESIS_PROFILE=fuzz)
runs them much longer.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import serialize_byte_tensor

from server.errors import ServingError
from server.protocol.http_codec import OutputEncoding, decode_request, encode_response
from server.protocol.http_limits import DecodeLimits
from server.protocol.tensors import array_from_bytes, array_to_bytes
from server.types import InferenceResponse

pytestmark = pytest.mark.fuzz

# small limits, so the fuzzer reaches them too
LIMITS = DecodeLimits(max_input_size=1 << 16, max_json_elements=2000, max_bytes_elements=300)
NUMERIC_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "UINT32": np.uint32,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)


def decode_or_refuse(body: bytes, header_length: int | None) -> Any:
    """decode_request's result, or None when it refused the body with a ServingError."""
    try:
        return decode_request(body, header_length, "m", "", None, LIMITS)
    except ServingError:
        return None


@st.composite
def numeric_tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(sorted(NUMERIC_DTYPES)))
    array = draw(hnp.arrays(NUMERIC_DTYPES[datatype], draw(shapes)))
    return datatype, array


@st.composite
def bytes_tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    shape = draw(shapes)
    items = draw(
        st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
    )
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return "BYTES", array.reshape(shape)


tensors = st.one_of(numeric_tensors(), bytes_tensors())


def json_safe(array: np.ndarray) -> bool:
    """JSON can carry the tensor: BYTES as UTF-8 text only (tritonclient refuses the rest), and
    finite numbers only (tritonclient writes inf as `Infinity`, which is not JSON; orjson writes
    it as null)."""
    if array.dtype.kind == "f":
        return bool(np.isfinite(array).all())
    try:
        for item in array.reshape(-1):
            if isinstance(item, bytes):
                item.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(body=st.binary(max_size=2000), header_length=st.none() | st.integers(0, 2000))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_bytes_decode_or_get_a_clear_error(
    body: bytes, header_length: int | None
) -> None:
    assume(header_length is None or header_length <= len(body))
    decode_or_refuse(body, header_length)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@given(
    inputs=st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["x", "y", "text"])},
            optional={
                "shape": json_values | st.lists(st.integers(-2, 2**62), max_size=4),
                "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BF16", "NOPE"])
                | json_values,
                "data": json_values,
                "parameters": st.dictionaries(
                    st.sampled_from(
                        ["binary_data_size", "shared_memory_region", "shared_memory_byte_size"]
                    ),
                    json_values,
                )
                | json_values,
            },
        ),
        max_size=3,
    )
    | json_values,
    outputs=json_values,
    parameters=json_values,
    tail=st.binary(max_size=64),
)
def test_structured_json_requests_decode_or_get_a_clear_error(
    inputs: Any, outputs: Any, parameters: Any, tail: bytes
) -> None:
    """Requests shaped like the v2 JSON schema, with any value in any field, plus binary data."""
    header = json.dumps({"inputs": inputs, "outputs": outputs, "parameters": parameters}).encode()
    decode_or_refuse(header, None)
    decode_or_refuse(header + tail, len(header))


@given(
    tensor_list=st.lists(tensors, min_size=1, max_size=3),
    binary=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_tritonclient_requests_round_trip(
    tensor_list: list[tuple[str, np.ndarray]], binary: list[bool]
) -> None:
    """Bodies built by tritonclient.http (JSON or binary per input) decode to the same tensors."""
    inputs = []
    for index, (datatype, array) in enumerate(tensor_list):
        infer_input = httpclient.InferInput(f"in{index}", list(array.shape), datatype)
        use_binary = binary[index] or datatype == "FP16" or not json_safe(array)
        infer_input.set_data_from_numpy(array, binary_data=use_binary)
        inputs.append(infer_input)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    result = decode_or_refuse(body, json_size)
    if result is None:  # only past the fuzzing limits
        elements = sum(a.size for t, a in tensor_list if t == "BYTES")
        assert len(body) > LIMITS.max_input_size or elements > LIMITS.max_bytes_elements
        return
    request, _ = result
    for index, (datatype, array) in enumerate(tensor_list):
        decoded = request.inputs[f"in{index}"]
        assert decoded.shape == array.shape
        if datatype == "BYTES":
            assert decoded.reshape(-1).tolist() == array.reshape(-1).tolist()
        else:
            np.testing.assert_array_equal(decoded, array)


@given(
    tensor=tensors,
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_mutated_binary_requests_decode_or_get_a_clear_error(
    tensor: tuple[str, np.ndarray], flips: list[tuple[int, int]]
) -> None:
    """A valid binary-extension body with some bytes changed (JSON header or tensor data)."""
    datatype, array = tensor
    infer_input = httpclient.InferInput("x", list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([infer_input])
    mutated = bytearray(body)
    for position, value in flips:
        if mutated:
            mutated[position % len(mutated)] = value
    decode_or_refuse(bytes(mutated), json_size)


@given(items=st.lists(st.binary(max_size=40), max_size=50))
def test_bytes_codec_matches_tritonclient(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    wire = array_to_bytes(array)
    if items:
        assert wire == serialize_byte_tensor(array).item()
    assert array_from_bytes("t", wire, "BYTES", (len(items),)).tolist() == items


@given(data=st.binary(max_size=300), count=st.integers(0, 2**40))
def test_arbitrary_bytes_data_decodes_or_gets_a_clear_error(data: bytes, count: int) -> None:
    try:
        decoded = array_from_bytes("t", data, "BYTES", (count,))
    except ServingError:
        return
    assert decoded.size == count and array_to_bytes(decoded) == data


@given(
    outputs=st.lists(tensors, min_size=1, max_size=3),
    binary_default=st.booleans(),
    request_id=st.text(max_size=8),
)
def test_responses_round_trip_through_tritonclient(
    outputs: list[tuple[str, np.ndarray]], binary_default: bool, request_id: str
) -> None:
    """encode_response's body, read back by tritonclient.http's InferResult."""
    arrays = {f"out{i}": array for i, (_, array) in enumerate(outputs)}
    response = InferenceResponse("m", "1", arrays, id=request_id)
    json_unsafe = any(a.dtype == np.float16 or not json_safe(a) for a in arrays.values())
    encoding = OutputEncoding(binary_default or json_unsafe, {})
    body, json_length = encode_response(response, encoding)
    result = httpclient.InferResult.from_response_body(body, header_length=json_length)
    for name, array in arrays.items():
        decoded = result.as_numpy(name)
        assert decoded is not None and decoded.shape == array.shape
        if array.dtype == np.object_:
            if encoding.binary_default:
                assert decoded.reshape(-1).tolist() == array.reshape(-1).tolist()
        else:
            np.testing.assert_array_equal(decoded, array)
