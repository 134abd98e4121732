"""What workers send each other survives the trip (server/workers/frames.py): requests,
responses, timings and every kind of array, with the array's values, dtype, shape and
writability."""

from __future__ import annotations

import numpy as np
import pytest

from server.batching import RequestTiming
from server.types import InferenceRequest, InferenceResponse, RequestedOutput
from server.workers import frames


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(24, dtype=np.int64).reshape(2, 3, 4)[:, 1:, ::2],  # not contiguous
        np.array(3.5, np.float16),  # 0-d
        np.zeros((0, 7), np.uint8),  # no rows
        np.array([True, False]),
        np.array([[b"ab", b""], [b"\x00z", b"longer bytes"]], dtype=object),  # BYTES
        np.arange(6, dtype=">i4"),  # big-endian keeps its byte order
    ],
    ids=["fp32", "strided", "0-d", "empty", "bool", "bytes", "big-endian"],
)
def test_arrays_arrive_equal_and_writable(array: np.ndarray) -> None:
    arrived = frames.loads(memoryview(frames.dumps({"x": array})))["x"]
    assert arrived.dtype == array.dtype and arrived.shape == array.shape
    assert arrived.tolist() == array.tolist()
    assert arrived.flags.writeable  # as default pickling gives: a model may write its inputs
    arrived[...] = arrived  # (a write does not raise)


def test_requests_responses_and_timings_keep_every_field() -> None:
    x = np.ones((2, 3), np.float32)
    request = InferenceRequest(
        "m",
        "2",
        {"x": x},
        id="r1",
        requested_outputs=(RequestedOutput("y", binary_data=True, classification=2),),
        parameters={"a": 1, "b": "s", "c": True, "d": 0.5},
        priority=3,
        timeout_us=100,
        protocol="grpc",
        sequence_id="seq",
        sequence_start=True,
        sequence_end=False,
        client="127.0.0.1:9",
        traceparent="00-ab-cd-01",
    )
    response = InferenceResponse("m", "2", {"y": x * 2}, id="r1", parameters={"p": 1}, final=False)
    timing = RequestTiming(0.1, 0.2, 0.3, 0.4, 8)
    got_request, got_response, got_timing = frames.loads(
        memoryview(frames.dumps((request, response, timing)))
    )
    assert got_timing == timing
    for got, sent in ((got_request, request), (got_response, response)):
        assert type(got) is type(sent)
        for name in sent.__slots__:
            value, expected = getattr(got, name), getattr(sent, name)
            if name in ("inputs", "outputs"):
                assert {k: v.tolist() for k, v in value.items()} == {
                    k: v.tolist() for k, v in expected.items()
                }
            else:
                assert value == expected, name
