"""The response cache: what the key depends on, LRU eviction within the size, --cache-config."""

from __future__ import annotations

import numpy as np
import pytest

from server.repository_format import parse_config
from server.response_cache import (
    CacheConfigError,
    ResponseCache,
    parse_cache_config,
    request_key,
    response_bytes,
    uses_response_cache,
)
from server.types import InferenceRequest, RequestedOutput


def request(
    x: np.ndarray, outputs: tuple[RequestedOutput, ...] | None = None, **more: np.ndarray
) -> InferenceRequest:
    return InferenceRequest("m", "1", {"x": x, **more}, requested_outputs=outputs)


def test_the_key_follows_the_inputs_and_requested_outputs_only() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    key = request_key("m", "1", request(x))
    # same bytes from another array, another request id: the same key
    same = InferenceRequest("m", "1", {"x": x.copy()}, id="other", priority=3)
    assert request_key("m", "1", same) == key
    assert request_key("m", "1", request(x[:, ::-1].copy()[:, ::-1])) == key  # same values
    different = [
        request_key("m", "2", request(x)),  # version
        request_key("n", "1", request(x)),  # model
        request_key("m", "1", request(x + 1)),  # data
        request_key("m", "1", request(x.reshape(4, 2))),  # shape
        request_key("m", "1", request(x.astype(np.float64))),  # datatype
        request_key("m", "1", request(x, (RequestedOutput("y"),))),  # requested outputs
        request_key("m", "1", request(x, (RequestedOutput("y", classification=2),))),
        request_key("m", "1", request(x, None, z=x)),  # another input
    ]
    assert len({key, *different}) == len(different) + 1
    # binary_data only changes the encoding, not the answer
    assert request_key("m", "1", request(x, (RequestedOutput("y", binary_data=True),))) == (
        request_key("m", "1", request(x, (RequestedOutput("y"),)))
    )


def test_bytes_inputs_are_keyed_by_their_contents() -> None:
    a = np.array([[b"ab", b"c"]], dtype=np.object_)
    b = np.array([[b"a", b"bc"]], dtype=np.object_)  # same concatenation, other split
    assert request_key("m", "1", request(a)) != request_key("m", "1", request(b))
    assert request_key("m", "1", request(a)) == request_key("m", "1", request(a.copy()))


def outputs(rows: int) -> dict[str, np.ndarray]:
    return {"y": np.zeros((rows, 25), dtype=np.float32)}  # rows * 100 bytes


def test_lru_eviction_keeps_the_cache_within_its_size() -> None:
    entry = response_bytes(outputs(1))
    cache = ResponseCache(3 * entry)
    for key in (b"a", b"b", b"c"):
        assert cache.insert(key, outputs(1))
    assert cache.lookup(b"a") is not None  # a is now the most recently used
    assert cache.insert(b"d", outputs(1))  # evicts b, the least recently used
    assert cache.lookup(b"b") is None
    assert all(cache.lookup(k) is not None for k in (b"a", b"c", b"d"))
    assert cache.used_bytes <= cache.size_bytes and len(cache) == 3
    assert cache.insert(b"big", outputs(2))  # needs two entries' room
    assert len(cache) == 2 and cache.used_bytes <= cache.size_bytes
    assert not cache.insert(b"huge", outputs(5))  # larger than the whole cache: not stored
    assert cache.lookup(b"huge") is None
    totals = cache.totals()
    assert totals["num_evictions"] == 3 and totals["num_entries"] == 2
    assert totals["num_lookups"] == totals["num_hits"] + totals["num_misses"]
    assert 0 < totals["util"] <= 1


def test_cached_outputs_are_private_read_only_copies() -> None:
    batch = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache = ResponseCache(10_000)
    cache.insert(b"k", {"y": batch[1:2]})  # a view of a batch's output
    batch[1] = -1
    cached = cache.lookup(b"k")
    assert cached is not None and cached["y"].tolist() == [[4.0, 5.0, 6.0, 7.0]]
    with pytest.raises(ValueError):
        cached["y"][0, 0] = 9


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["redis,host=x"], "not available"),
        (["local,size=abc"], "whole number"),
        (["local,count=3"], "only size"),
        (["local"], "expected <cache>,<key>=<value>"),
    ],
)
def test_bad_cache_config(values: list[str], fragment: str) -> None:
    with pytest.raises(CacheConfigError, match=fragment):
        parse_cache_config(values)


def test_cache_config_size() -> None:
    assert parse_cache_config([]).size_bytes == 0
    assert parse_cache_config(["local,size=1048576"]).size_bytes == 1048576


def test_sequence_and_decoupled_models_never_use_the_cache() -> None:
    base = "response_cache { enable: true }\nmax_batch_size: 4\n"
    assert uses_response_cache(parse_config(base))
    assert not uses_response_cache(parse_config("max_batch_size: 4\n"))
    assert not uses_response_cache(parse_config(base + "sequence_batching { }\n"))
    decoupled = base + "model_transaction_policy { decoupled: true }\n"
    assert not uses_response_cache(parse_config(decoupled))
