"""The response cache: what the key depends on, LRU eviction within the size, --cache-config."""

from __future__ import annotations

from pathlib import Path

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
from server.workers.byte_pool import SharedCachePool


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


def _pooled_caches(folder: Path, entries: int, workers: int = 2) -> list[ResponseCache]:
    """The caches of `workers` workers sharing a size of `entries` one-row responses, each with
    its real pool file (server/workers/byte_pool.py), as `ferry serve --workers N` builds them."""
    size = entries * response_bytes(outputs(1))
    return [
        ResponseCache(size, SharedCachePool(folder, workers, slot, size)) for slot in range(workers)
    ]


def test_one_worker_may_fill_the_servers_whole_cache(tmp_path: Path) -> None:
    """The owner of the one cached model holds as many entries as a single server would (a
    1/N split held half)."""
    owner, other = _pooled_caches(tmp_path, 4)
    for key in (b"a", b"b", b"c", b"d"):
        assert owner.insert(key, outputs(1))
    assert len(owner) == 4 and owner.used_bytes == owner.size_bytes
    assert owner.insert(b"e", outputs(1))  # full: its least recently used entry goes
    assert owner.lookup(b"a") is None and len(owner) == 4
    assert owner.totals()["util"] == 1.0 and other.totals()["util"] == 0.0
    assert owner.insert(b"big", outputs(5))  # most of the whole size in one response
    assert len(owner) == 1


def test_a_worker_under_its_share_gets_it_back_from_one_past_it(tmp_path: Path) -> None:
    first, second = _pooled_caches(tmp_path, 4)
    for key in (b"a", b"b", b"c", b"d"):
        assert first.insert(key, outputs(1))
    assert not second.insert(b"x", outputs(1))  # first holds every byte: second claims room
    assert first.lookup(b"d") is not None  # first's next use gives back what is past its share
    assert len(first) == 2 and first.lookup(b"a") is None  # its least recently used went
    assert second.insert(b"x", outputs(1)) and second.insert(b"y", outputs(1))
    assert first.lookup(b"d") is not None and len(first) == 2  # no claim stands: it keeps 2
    # both at their share: a full pool makes room among each worker's own entries
    assert second.insert(b"z", outputs(1)) and second.lookup(b"x") is None
    assert first.insert(b"e", outputs(1)) and len(first) == 2
    assert first.used_bytes + second.used_bytes <= first.size_bytes


def test_a_worker_past_its_share_does_not_claim(tmp_path: Path) -> None:
    """A worker that already holds its share makes room among its own entries rather than
    taking the others' share from them."""
    first, second = _pooled_caches(tmp_path, 4)
    assert first.insert(b"a", outputs(1)) and first.insert(b"b", outputs(1))
    for key in (b"x", b"y"):
        assert second.insert(key, outputs(1))
    assert first.insert(b"c", outputs(1))  # the pool is full: evicts its own a
    assert first.lookup(b"a") is None and len(first) == 2
    assert second.lookup(b"x") is not None and len(second) == 2  # untouched


def test_a_replaced_worker_starts_with_no_cache_bytes_or_claim(tmp_path: Path) -> None:
    survivor, killed = _pooled_caches(tmp_path, 4)
    assert survivor.insert(b"a", outputs(1))
    for key in (b"x", b"y", b"z"):
        assert killed.insert(key, outputs(1))
    assert killed._pool is not None
    killed._pool.claim(1)  # it died claiming room
    size = survivor.size_bytes
    replacement = ResponseCache(size, SharedCachePool(tmp_path, 2, 1, size))
    for key in (b"b", b"c", b"d"):
        assert survivor.insert(key, outputs(1))  # the dead worker's bytes are free again
    assert len(survivor) == 4  # and no stale claim made it give any back
    assert not replacement.insert(b"x", outputs(1))  # the survivor holds every byte
    assert survivor.lookup(b"d") is not None and len(survivor) == 2  # gives back past its share
    assert replacement.insert(b"x", outputs(1))


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
