"""HTTP limits below the transport: the buffered-bytes budget, the JSON size and element count,
tensor sizes, BYTES element counts, JSON nesting depth and bounded decompression."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib

import numpy as np
import pytest

from server.errors import ServingError
from server.protocol.http_codec import decode_request
from server.protocol.http_limits import (
    BufferBudget,
    DecodeLimits,
    HttpLimits,
    RequestRejected,
    check_json_size,
    http_limits,
)
from server.protocol.inflate import STEP_BYTES, BoundedInflater, decompress_bounded
from server.protocol.tensors import MAX_JSON_DEPTH, array_from_bytes, array_to_bytes
from server.settings import ServerSettings


def json_body(inputs: list[dict[str, object]]) -> bytes:
    return json.dumps({"inputs": inputs}, separators=(",", ":")).encode()


def nested(leaf: str, depth: int) -> str:
    """JSON text of `leaf` inside `depth` arrays (json.dumps recurses: no deep nesting)."""
    return "[" * depth + leaf + "]" * depth


def nested_body(datatype: str, shape: list[int], data: str) -> bytes:
    return (
        f'{{"inputs": [{{"name": "x", "shape": {shape}, "datatype": "{datatype}", '
        f'"data": {data}}}]}}'
    ).encode()


# --- budget ---------------------------------------------------------------------------------


def test_budget_refuses_past_its_capacity_and_takes_back_releases() -> None:
    budget = BufferBudget(100)
    first, second = budget.reservation(), budget.reservation()
    first.grow(60)
    second.grow(40)
    with pytest.raises(RequestRejected) as refused:
        second.grow(1)
    assert refused.value.status == 503
    assert "--http-max-buffered-bytes" in refused.value.message
    assert (budget.used, second.held) == (100, 40)
    first.shrink(10)
    second.grow(10)
    first.release()
    first.release()  # idempotent
    assert budget.used == 50
    second.release()
    assert budget.used == 0


def test_limits_validate_their_flags() -> None:
    with pytest.raises(ValueError, match="--http-max-buffered-bytes"):
        HttpLimits(max_request_bytes=200, max_buffered_bytes=100)
    with pytest.raises(ValueError, match="--http-header-timeout-secs"):
        HttpLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="--http-max-json-elements"):
        HttpLimits(decode=DecodeLimits(max_json_elements=-1))
    settings = ServerSettings(model_repository=".", http_max_input_size=123)  # type: ignore[arg-type]
    limits = http_limits(settings)
    assert limits.decode.max_input_size == 123
    assert limits.max_request_bytes == settings.http_max_request_bytes


# --- JSON size and element count ------------------------------------------------------------


def test_json_over_the_input_size_is_refused_with_tritons_message() -> None:
    body = b'{"inputs": []}' + b" " * 100
    check_json_size(body, len(body), DecodeLimits(max_input_size=len(body)))
    with pytest.raises(ServingError, match=r"request JSON size of 114 bytes exceeds the maximum"):
        check_json_size(body, len(body), DecodeLimits(max_input_size=113))


@pytest.mark.parametrize(
    ("item", "weight"),
    [(b"0", 1), (b"1.5e3", 1), (b'"s"', 1), (b"[]", 4), (b"{}", 4), (b"[1]", 4)],
)
def test_json_elements_are_counted_before_parsing(item: bytes, weight: int) -> None:
    """Numbers and strings count 1, arrays and objects 3 (plus their separator): the count is
    the parse's cost, so a body at the limit passes and one element more does not."""
    limit = 3000
    count = (limit - 3) // weight  # the outer array weighs 3, the first item has no comma
    body = b"[" + b",".join([item] * count) + b"]"
    elements = 1 + 3 + (count - 1) + (weight - 1) * count
    assert limit - weight < elements <= limit
    check_json_size(body, len(body), DecodeLimits(max_json_elements=limit))
    with pytest.raises(ServingError, match="--http-max-json-elements"):
        check_json_size(body, len(body), DecodeLimits(max_json_elements=elements - 1))


def test_json_element_count_looks_only_at_the_json_part() -> None:
    header = b'{"inputs": [{"name": "x"}]}'
    body = header + b"," * 100_000  # binary tensor data full of commas
    check_json_size(body, len(header), DecodeLimits(max_json_elements=10))


def test_a_huge_json_body_is_refused_without_reading_all_of_it() -> None:
    body = b"[" + b"0," * (32 << 20) + b"0]"
    started = time.process_time()
    with pytest.raises(ServingError, match="--http-max-json-elements"):
        check_json_size(body, len(body), DecodeLimits(max_input_size=1 << 30))
    assert time.process_time() - started < 0.5  # the first 1 MiB window is past the limit


# --- what a request decodes into ------------------------------------------------------------


def test_bytes_elements_over_the_limit_are_refused_before_decoding() -> None:
    limits = DecodeLimits(max_bytes_elements=4)
    data = array_to_bytes(np.array([b"a", b"b", b"c", b"d", b"e"], dtype=np.object_))
    header = json_body(
        [
            {
                "name": "text",
                "shape": [5],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    )
    with pytest.raises(ServingError, match=r"5 BYTES tensor elements.*--http-max-bytes-elements"):
        decode_request(header + data, len(header), "m", "", None, limits)
    both = json_body(
        [
            {"name": "a", "shape": [3], "datatype": "BYTES", "data": ["x", "y", "z"]},
            {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
        ]
    )
    with pytest.raises(ServingError, match="5 BYTES tensor elements"):
        decode_request(both, None, "m", "", None, limits)
    request, _ = decode_request(both, None, "m", "", None, DecodeLimits(max_bytes_elements=5))
    assert request.inputs["a"].tolist() == [b"x", b"y", b"z"]


def test_a_declared_shape_too_big_for_the_input_size_is_refused_before_conversion() -> None:
    body = json_body([{"name": "x", "shape": [1 << 30], "datatype": "FP32", "data": [1.0]}])
    with pytest.raises(ServingError, match=r"JSON input 'x' has a byte_size \(4294967296 bytes\)"):
        decode_request(body, None, "m", "")


def test_json_bytes_input_counts_its_serialized_size() -> None:
    """Triton's size for a JSON BYTES input: each string plus its 4-byte length (here 4000 bytes
    from a 3 KB body)."""
    body = json_body([{"name": "t", "shape": [1000], "datatype": "BYTES", "data": [""] * 1000}])
    decode_request(body, None, "m", "", None, DecodeLimits(max_input_size=4000))
    with pytest.raises(ServingError, match=r"JSON input 't' has a byte_size \(4000 bytes\)"):
        decode_request(body, None, "m", "", None, DecodeLimits(max_input_size=3999))


@pytest.mark.parametrize("datatype", ["BYTES", "INT32"])
def test_json_data_nesting_follows_tritons_depth_limit(datatype: str) -> None:
    leaf = '"a"' if datatype == "BYTES" else "1"
    body = nested_body(datatype, [1], nested(leaf, MAX_JSON_DEPTH - 1))
    if datatype == "BYTES":
        request, _ = decode_request(body, None, "m", "")
        assert request.inputs["x"].size == 1
    else:  # numpy stops at 64 dimensions (a 400 too); the depth check comes first past 100
        with pytest.raises(ServingError, match="data does not match"):
            decode_request(body, None, "m", "")
    for depth in (MAX_JSON_DEPTH, 1000):
        body = nested_body(datatype, [1], nested(leaf, depth))
        with pytest.raises(ServingError, match=r"nesting depth exceeds maximum allowed limit"):
            decode_request(body, None, "m", "")


def test_bytes_decoding_checks_lengths_against_the_data() -> None:
    good = array_to_bytes(np.array([b"ab", b"", b"cde"], dtype=np.object_))
    assert array_from_bytes("t", good, "BYTES", (3,)).tolist() == [b"ab", b"", b"cde"]
    assert array_from_bytes("t", memoryview(b"xx" + good), "BYTES", (3,), 2).tolist() == [
        b"ab",
        b"",
        b"cde",
    ]
    for data, message in [
        (good[:-1], "runs past"),
        (good[:8], "truncated BYTES element length"),
        (good + b"\0\0\0\0", "unexpected number of string elements 4 for input 't', expecting 3"),
        (good[:6], "expected 3 string elements for input 't', got 1"),  # Triton's words
    ]:
        with pytest.raises(ServingError, match=message):
            array_from_bytes("t", data, "BYTES", (3,))
    with pytest.raises(ServingError, match="got 0"):  # a shape far bigger than its data
        array_from_bytes("t", b"", "BYTES", (1 << 20, 1 << 20))


# --- decompression --------------------------------------------------------------------------


def test_inflation_stops_at_the_limit_in_bounded_steps() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 KB -> 64 MiB
    inflater = BoundedInflater(bomb, "gzip", 10 << 20, "--http-max-input-size")
    produced = 0
    with pytest.raises(ServingError, match=r"maximum allowed value of 10485760 bytes"):
        while not inflater.done:
            piece = inflater.step()
            assert len(piece) <= STEP_BYTES
            produced += len(piece)
    assert produced <= 10 << 20


def test_decompress_bounded_reports_each_piece_and_can_be_stopped() -> None:
    data = bytes(range(256)) * 40_000  # 10 MB, several steps
    sizes: list[int] = []
    result = asyncio.run(
        decompress_bounded(
            zlib.compress(data), "deflate", len(data), "--flag", on_piece=sizes.append
        )
    )
    assert result == data
    assert sum(sizes) == len(data) and len(sizes) > 1

    def refuse(size: int) -> None:
        raise RequestRejected(503, "budget")

    with pytest.raises(RequestRejected):
        asyncio.run(decompress_bounded(gzip.compress(data), "gzip", len(data), "--f", refuse))
    with pytest.raises(ServingError, match="not valid gzip data"):
        asyncio.run(decompress_bounded(b"\x1f\x8bnot gzip", "gzip", 100, "--f", sizes.append))
