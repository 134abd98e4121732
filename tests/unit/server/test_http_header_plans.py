"""Remembered HTTP request headers (http_codec's header plans): a body decoded from its header's
plan decodes to what the full decode gives, errors included, and only headers that may be
remembered are."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import serialize_byte_tensor

from server.errors import ServingError
from server.protocol import http_codec
from server.protocol.http_codec import decode_request
from server.protocol.http_limits import DecodeLimits


@pytest.fixture(autouse=True)
def no_plans() -> Iterator[None]:
    http_codec._header_plans.clear()
    http_codec._headers_seen.clear()
    yield
    http_codec._header_plans.clear()
    http_codec._headers_seen.clear()


def plan_for(body: bytes, length: int) -> None:
    """Decode `body` until its header has a plan (a header is planned the second time)."""
    for _ in range(2):
        decode_request(body, length, "m", "2")
    assert body[:length] in http_codec._header_plans


def binary_body(
    inputs: list[tuple[str, str, list[int], bytes]], **fields: Any
) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "datatype": datatype,
                "parameters": {"binary_data_size": len(data)},
            }
            for name, datatype, shape, data in inputs
        ],
        **fields,
    }
    head = json.dumps(header).encode()
    return head + b"".join(data for *_, data in inputs), len(head)


def decoded(body: bytes, length: int, limits: DecodeLimits | None = None) -> Any:
    """decode_request's answer as comparable values, or its error."""
    try:
        request, encoding = decode_request(
            body, length, "m", "2", None, limits or http_codec.DEFAULT_DECODE_LIMITS
        )
    except ServingError as exc:
        return ("error", exc.kind, str(exc))
    inputs = {name: (a.dtype.str, a.shape, a.tolist()) for name, a in request.inputs.items()}
    return (dataclasses.replace(request, inputs={}), inputs, encoding)


def fp32(*values: float) -> bytes:
    return np.array(values, np.float32).tobytes()


CASES = {
    "one input": [("x", "FP32", [1, 2], fp32(1, 2))],
    "two inputs, outputs and parameters": [
        ("a", "INT64", [2], np.array([5, -6], np.int64).tobytes()),
        ("b", "FP32", [1, 1], fp32(3)),
    ],
    "bytes": [("s", "BYTES", [2], serialize_byte_tensor(np.array([b"ab", b""], object)).item())],
    "empty tensor": [("x", "FP32", [0, 2], b"")],
}
FIELDS: dict[str, dict[str, Any]] = {
    "one input": {},
    "two inputs, outputs and parameters": {
        "id": "r7",
        "outputs": [{"name": "y", "parameters": {"binary_data": True, "classification": 2}}],
        "parameters": {"priority": 3, "sequence_id": "s", "sequence_start": True, "mine": 1.5},
    },
    "bytes": {"parameters": {"binary_data_output": True}},
    "empty tensor": {"outputs": []},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_planned_decode_answers_as_the_full_decode(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, length = binary_body(CASES[case], **FIELDS[case])
    first = decoded(body, length)
    assert not http_codec._header_plans  # seen once: not yet
    plan_for(body, length)
    # the same header with other data: its own tensors, from the plan
    other = body[:length] + bytes(reversed(body[length:]))
    planned = decoded(other, length)
    monkeypatch.setattr(http_codec, "PLANNED_HEADER_MAX_BYTES", 0)  # the full decode
    assert decoded(other, length) == planned
    assert decoded(body, length) == first


def test_a_body_whose_data_does_not_fit_its_plan_gets_the_full_decode_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body, length = binary_body([("x", "FP32", [1, 2], fp32(1, 2))])
    plan_for(body, length)
    short, long = body[:-4], body + b"\0"
    planned = [decoded(short, length), decoded(long, length)]
    assert planned[0][0] == "error" and "expecting 8 additional bytes" in planned[0][2]
    assert planned[1][0] == "error" and "unexpected additional input data" in planned[1][2]
    monkeypatch.setattr(http_codec, "PLANNED_HEADER_MAX_BYTES", 0)
    assert [decoded(short, length), decoded(long, length)] == planned


def test_bad_bytes_data_and_the_element_limit_are_checked_for_every_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = serialize_byte_tensor(np.array([b"ab", b"c"], object)).item()
    three = serialize_byte_tensor(np.array([b"x", b"y", b"z"], object)).item()
    body, length = binary_body([("s", "BYTES", [2], good), ("t", "BYTES", [3], three)])
    plan_for(body, length)
    assert decoded(body, length)[1]["s"][2] == [b"ab", b"c"]
    bad = body[:length] + (99).to_bytes(4, "little") + body[length + 4 :]  # a length past the end
    cases = [
        (bad, None),
        (body, DecodeLimits(max_bytes_elements=1)),  # the first input passes it
        (body, DecodeLimits(max_bytes_elements=4)),  # the second does
    ]
    planned = [decoded(data, length, limits) for data, limits in cases]
    assert all(answer[0] == "error" for answer in planned)
    assert "has 2 BYTES tensor elements, more than the maximum of 1" in planned[1][2]
    assert "has 5 BYTES tensor elements, more than the maximum of 4" in planned[2][2]
    monkeypatch.setattr(http_codec, "PLANNED_HEADER_MAX_BYTES", 0)
    assert [decoded(data, length, limits) for data, limits in cases] == planned


def test_each_request_gets_its_own_parameters() -> None:
    body, length = binary_body([("x", "FP32", [1], fp32(1))], parameters={"mine": 1})
    plan_for(body, length)
    first, _ = decode_request(body, length, "m", "")
    first.parameters["mine"] = 2  # type: ignore[index]
    second, _ = decode_request(body, length, "m", "")
    assert second.parameters == {"mine": 1} and second.parameters is not first.parameters


@pytest.mark.parametrize(
    "header",
    [
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}],
        },
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4},
                }
            ]
        },
    ],
    ids=["json data", "output in shared memory", "input in shared memory"],
)
def test_headers_with_json_data_or_shared_memory_are_not_remembered(
    header: dict[str, Any],
) -> None:
    head = json.dumps(header).encode()
    body = head + (fp32(1) if "data" not in header["inputs"][0] else b"")
    for _ in range(3):
        decoded(body, len(head) if "data" not in header["inputs"][0] else len(body))
    assert not http_codec._header_plans


def test_the_remembered_headers_are_bounded() -> None:
    for i in range(http_codec.PLANNED_HEADERS_MAX + 3):
        body, length = binary_body([("x", "FP32", [1], fp32(1))], id=str(i))
        plan_for(body, length)
        assert 1 <= len(http_codec._header_plans) <= http_codec.PLANNED_HEADERS_MAX


def test_headers_seen_once_make_no_plan_and_are_bounded() -> None:
    """A client that sends a new id with every request: no plan is made (it would never be
    used), and the headers kept to recognise a second sighting stay bounded."""
    for i in range(http_codec.HEADERS_SEEN_MAX + 3):
        body, length = binary_body([("x", "FP32", [1], fp32(1))], id=str(i))
        decoded(body, length)
        assert 1 <= len(http_codec._headers_seen) <= http_codec.HEADERS_SEEN_MAX
    assert not http_codec._header_plans
