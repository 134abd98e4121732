"""Triton's response cache (`--cache-config local,size=BYTES`, per model `response_cache {
enable: true }`): one LRU shared by every model, bounded by the configured bytes.

A key is a digest of the model name and version, each input's name, datatype, shape and bytes,
and the requested outputs with the parameters that change their contents (classification). A
hit answers from the cache without queueing; a miss runs the model and stores the response.
Models with sequences or decoupled outputs never use it (their answers depend on more than the
request).

Under `ferry serve --workers N` the size stays the server's. The entries live in the worker that
runs the model (its owner), and the bytes are a pool the workers lease from
(server/workers/byte_pool.py SharedCachePool): one worker may fill the whole size, as a single
server would, with one cached model typically. When the pool is full, a worker makes room among
its own least recently used entries; a worker holding less than its fair share (size / N) that
finds no room also claims it, and the workers above their share give back what they hold past it
when they next use their cache. So every worker can keep its fair share, and one worker the
rest while the others do not need it.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.repository_format import ModelConfig
from server.types import InferenceRequest

CACHE_IMPLEMENTATIONS = ("local",)
ENTRY_OVERHEAD_BYTES = 64  # per-entry bookkeeping counted against the size (key, dict slots)


class CacheConfigError(ValueError):
    """A --cache-config value ferry cannot use."""


@dataclass(frozen=True)
class CacheSettings:
    """The server-side cache (Triton's --cache-config); size 0: no cache."""

    size_bytes: int = 0


def parse_cache_config(values: list[str] | tuple[str, ...]) -> CacheSettings:
    """Triton's `--cache-config <cache>,<key>=<value>` (repeatable); only `local,size=BYTES`."""
    caches: set[str] = set()
    size: int | None = None
    for value in values:
        cache, _, setting = value.partition(",")
        key, equals, text = setting.partition("=")
        if not equals:
            raise CacheConfigError(f"'{value}': expected <cache>,<key>=<value>")
        caches.add(cache)
        if cache not in CACHE_IMPLEMENTATIONS:
            raise CacheConfigError(
                f"cache '{cache}' is not available in ferry (available: "
                f"{', '.join(CACHE_IMPLEMENTATIONS)})"
            )
        if key != "size":
            raise CacheConfigError(f"'{value}': the local cache takes only size=BYTES")
        if not text.isdigit():
            raise CacheConfigError(f"'{value}': size must be a whole number of bytes")
        size = int(text)
    if len(caches) > 1:
        raise CacheConfigError("multiple cache configurations are not supported")
    if caches and size is None:
        raise CacheConfigError("the local cache needs size=BYTES")
    return CacheSettings(size or 0)


def uses_response_cache(config: ModelConfig) -> bool:
    """Whether a model's requests go through the cache (when the server has one)."""
    return (
        config.response_cache.enable
        and not config.HasField("sequence_batching")
        and not config.model_transaction_policy.decoupled
    )


def request_key(model: str, version: str, request: InferenceRequest) -> bytes:
    """The digest a request is cached under (inputs in name order, so order does not matter)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model}\0{version}\0".encode())
    for name in sorted(request.inputs):
        array = request.inputs[name]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype.kind == "O":
            for item in array.reshape(-1):
                data = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        else:
            digest.update(np.ascontiguousarray(array).data)
    if request.requested_outputs is not None:
        for output in request.requested_outputs:
            digest.update(f"\1{output.name}\0{output.classification}".encode())
    return digest.digest()


def response_bytes(outputs: Mapping[str, np.ndarray]) -> int:
    """What a cached response costs against the cache size."""
    total = ENTRY_OVERHEAD_BYTES
    for name, array in outputs.items():
        total += len(name) + array.nbytes
        if array.dtype.kind == "O":
            total += sum(len(item) for item in array.reshape(-1) if isinstance(item, bytes))
    return total


def frozen_copy(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Own, read-only copies (a response's arrays may be views of a whole batch's output)."""
    copies = {}
    for name, array in outputs.items():
        copy = np.array(array, copy=True)
        copy.flags.writeable = False
        copies[name] = copy
    return copies


@dataclass
class CacheCounters:
    """Totals over every model (the nv_cache_* gauges)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    lookup_s: float = 0.0
    insertion_s: float = 0.0


class CachePool(Protocol):
    """The server's cache bytes that the workers of `--workers N` lease from
    (server/workers/byte_pool.py SharedCachePool)."""

    workers: int

    def lease(self, size: int) -> bool:
        """Lease `size` more bytes to this worker; False, leasing nothing, when they would pass
        the server's size."""
        ...

    def give_back(self, size: int) -> None: ...

    def claim(self, size: int) -> None:
        """Ask the workers above their fair share for `size` bytes (0: this worker needs none)."""
        ...

    def claimed_by_others(self) -> bool:
        """Whether another worker waits for bytes (read without a lock: on every look-up)."""
        ...


class ResponseCache:
    """LRU of responses by request digest, bounded by `size_bytes` in total (with a `pool`, the
    server's total across workers: see the module's docstring). Used on the event loop only (the
    metrics scrape reads its counters, plain numbers, from another thread)."""

    def __init__(self, size_bytes: int, pool: CachePool | None = None) -> None:
        self.size_bytes = size_bytes
        self.used_bytes = 0
        self.counters = CacheCounters()
        self._entries: collections.OrderedDict[bytes, tuple[dict[str, np.ndarray], int]] = (
            collections.OrderedDict()
        )
        self._pool = pool
        # what this worker may hold: all of the size alone, else what it has leased
        self._granted = size_bytes if pool is None else 0
        self._fair_share = size_bytes if pool is None else size_bytes // pool.workers
        self._claiming = False

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes) -> dict[str, np.ndarray] | None:
        """The cached outputs (now most recently used), or None."""
        if self._pool is not None:
            self._yield_to_claims(self._pool)
        entry = self._entries.get(key)
        if entry is None:
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def insert(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> bool:
        """Store a response, evicting the least recently used ones to make room; False when it
        is larger than the whole cache, or (with a pool) when the other workers hold the room
        it needs (it is not stored)."""
        size = response_bytes(outputs)
        if size > self.size_bytes:
            return False
        copies = frozen_copy(outputs)
        old = self._entries.pop(key, None)
        if old is not None:
            self.used_bytes -= old[1]
        if not self._make_room(size):
            return False
        self._entries[key] = (copies, size)
        self.used_bytes += size
        return True

    def _make_room(self, size: int) -> bool:
        """Room for `size` more bytes within this worker's grant: leased from the pool where it
        has room, else made by evicting this worker's least recently used entries."""
        pool = self._pool
        need = self.used_bytes + size
        if pool is not None and need > self._granted:
            if pool.lease(need - self._granted):
                self._granted = need
                if self._claiming:
                    pool.claim(0)
                    self._claiming = False
            elif need <= self._fair_share:  # the others hold this worker's share: ask for it
                pool.claim(size)
                self._claiming = True
        self._evict_down_to(self._granted - size)
        return self.used_bytes + size <= self._granted

    def _yield_to_claims(self, pool: CachePool) -> None:
        """Past its fair share while another worker claims room: evict down to the share and
        give back every byte not in use."""
        if self._granted <= self._fair_share or not pool.claimed_by_others():
            return
        self._evict_down_to(self._fair_share)
        pool.give_back(self._granted - self.used_bytes)
        self._granted = self.used_bytes

    def _evict_down_to(self, limit: int) -> None:
        entries = self._entries
        while self.used_bytes > limit and entries:
            _, (_, evicted) = entries.popitem(last=False)
            self.used_bytes -= evicted
            self.counters.evictions += 1

    def totals(self) -> dict[str, float]:
        """Triton's nv_cache_* gauges (durations in microseconds); with a pool, `util` is this
        worker's part of the server's fill ratio (the workers' parts add up)."""
        counters = self.counters
        return {
            "util": self.used_bytes / self.size_bytes if self.size_bytes else 0.0,
            "num_entries": len(self._entries),
            "num_hits": counters.hits,
            "num_misses": counters.misses,
            "num_lookups": counters.hits + counters.misses,
            "num_evictions": counters.evictions,
            "lookup_duration": counters.lookup_s * 1e6,
            "insertion_duration": counters.insertion_s * 1e6,
        }
