"""Triton's system shared memory extension (`--allow-client-shm`): clients register POSIX shared
memory objects they created (`tritonclient.utils.shared_memory`) by name; requests then name a
region, offset and byte size for an input to read or an output to write.

Inputs are copied out of a region when a request is decoded and outputs are copied in when its
response is encoded, both under one lock, so the batcher never sees shared memory. A request
holds every region it names from decode to the end of its response (`hold()`); unregistering a
held region, as in Triton, keeps it registered and mapped until its last request is done, so an
in-flight request never loses its buffers.
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import ErrorKind, ServingError, invalid

# Where Linux keeps POSIX shared memory objects: shm_open("/key") opens /dev/shm/key.
SHM_DIRECTORY = Path("/dev/shm")


@dataclass(frozen=True, slots=True)
class SharedMemoryReference:
    """One tensor's place in a registered region: `byte_size` bytes at `offset` into it."""

    region: str
    byte_size: int
    offset: int = 0


def shared_memory_reference(
    tensor: str, region: Any, byte_size: Any, offset: Any = 0
) -> SharedMemoryReference:
    """Validate a tensor's `shared_memory_*` parameters (as sent on either wire)."""
    if not isinstance(region, str) or not region:
        raise invalid(
            f"invalid value for 'shared_memory_region' parameter for tensor "
            f"'{tensor}', expected a region name"
        )
    if byte_size is None:  # as Triton: 0, so the size check names what was expected
        byte_size = 0
    for label, value in (("shared_memory_byte_size", byte_size), ("shared_memory_offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(
                f"invalid value for '{label}' parameter for tensor '{tensor}', "
                "expected a non-negative integer"
            )
    return SharedMemoryReference(region, byte_size, offset)


NOT_ENABLED = (
    "Client shared memory is disabled: it is not enabled on this server (start ferry serve "
    "with --allow-client-shm); send tensors in the request body (binary tensor data extension)"
)


def require_enabled(shared_memory: SharedMemoryManager | None) -> SharedMemoryManager:
    """The manager; a request naming a region while the extension is off gets UNSUPPORTED."""
    if shared_memory is None:
        raise ServingError(ErrorKind.UNSUPPORTED, NOT_ENABLED)
    return shared_memory


def cuda_register_error(shared_memory: SharedMemoryManager | None, region: str) -> ServingError:
    """Why registering CUDA shared memory fails: ferry maps no GPU memory, and answers as a
    Triton built without GPU support does."""
    if shared_memory is None:
        return ServingError(ErrorKind.UNSUPPORTED, NOT_ENABLED)
    if not region:
        return invalid("'region name' is necessary to register cuda shared memory region")
    return invalid(f"failed to register CUDA shared memory region: '{region}', GPUs not supported")


_SIZE_MAX = 2**64 - 1  # size_t: what Triton adds offsets and sizes in

# shm_open keys Triton keeps for its python backend's own regions
RESERVED_KEY_PREFIX = "triton_python_backend_shm_region_"


def output_destination(
    shared_memory: SharedMemoryManager | None,
    tensor: str,
    region: Any,
    byte_size: Any,
    offset: Any,
    classification: bool,
    binary_data: bool = False,
) -> SharedMemoryReference:
    """Where a requested output goes (either wire), checked against the registered regions."""
    manager = require_enabled(shared_memory)
    if classification:
        raise invalid("Output can't set both 'shared_memory_region' and 'classification'")
    if binary_data:
        raise invalid("Output can't set both 'shared_memory_region' and 'binary_data'")
    reference = shared_memory_reference(tensor, region, byte_size, offset)
    manager.check(reference)
    return reference


def select_regions(regions: list[dict[str, Any]], name: str = "") -> list[dict[str, Any]]:
    """The status of region `name` among `regions` (NOT_FOUND when none has that name), or of
    all when `name` is empty."""
    if not name:
        return regions
    chosen = [region for region in regions if region["name"] == name]
    if not chosen:
        raise ServingError(
            ErrorKind.NOT_FOUND, f"Unable to find system shared memory region: '{name}'"
        )
    return chosen


@dataclass(slots=True)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    start: int  # where the region begins inside `mapping` (mmap offsets are page-aligned)
    users: int = 0  # requests holding the region
    unregistered: bool = False  # unmapped once `users` drops to 0


# The regions the current request holds (a list while inside SharedMemoryManager.hold()).
_HELD: contextvars.ContextVar[list[_Region] | None] = contextvars.ContextVar(
    "ferry_held_shared_memory", default=None
)


class SharedMemoryManager:
    """Registered system shared memory regions, by name."""

    def __init__(self, directory: Path = SHM_DIRECTORY) -> None:
        self._directory = directory
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map `byte_size` bytes at `offset` of shared memory object `key` as region `name`."""
        if not name:
            raise invalid("'region name' is necessary to register system shared memory region")
        if byte_size <= 0 or offset < 0:
            raise invalid(
                f"failed to register shared memory region '{name}': invalid args (byte_size "
                "must be greater than 0 and offset non-negative)"
            )
        with self._lock:
            if name in self._regions:
                raise ServingError(
                    ErrorKind.ALREADY_EXISTS, f"shared memory region '{name}' already in manager"
                )
            self._regions[name] = self._map(name, key, offset, byte_size)

    def _map(self, name: str, key: str, offset: int, byte_size: int) -> _Region:
        path = self._path(name, key)
        try:  # as shm_open does: no symlinks, not inherited by child processes
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise invalid(
                f"Unable to open shared memory region: '{key}' ({exc.strerror})"
            ) from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise invalid(
                    f"Unable to open shared memory region: '{key}' (not a shared memory object)"
                )
            if offset + byte_size > status.st_size:
                raise invalid(
                    f"failed to register shared memory region '{name}': invalid args (offset "
                    f"{offset} + byte_size {byte_size} exceeds the {status.st_size} "
                    f"bytes of shared memory object '{key}')"
                )
            start = offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(
                    fd,
                    start + byte_size,
                    mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=offset - start,
                )
            except OSError as exc:
                raise invalid(
                    f"failed to register shared memory region '{name}': unable to "
                    f"map '{key}': {exc.strerror}"
                ) from None
        finally:
            os.close(fd)
        return _Region(name, key, offset, byte_size, mapping, start)

    def _path(self, name: str, key: str) -> Path:
        """The object's file: a POSIX shm name is one path component, leading slashes aside."""
        base = key.lstrip("/")
        if not base:  # Triton's words
            raise invalid(
                f"cannot register shared memory region '{name}' - invalid shm key '{key}'"
            )
        if base.startswith(RESERVED_KEY_PREFIX):
            raise invalid(
                f"cannot register shared memory region '{name}' with key '{key}' as the key "
                f"contains the reserved prefix '{RESERVED_KEY_PREFIX}'"
            )
        if "/" in base or "\0" in base or base in (".", ".."):
            raise invalid(
                f"invalid shared memory key '{key}': expected a POSIX shared memory "
                "object name such as '/input_data'"
            )
        return self._directory / base

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """`{name, key, offset, byte_size}` of one region, or of all when `name` is empty."""
        with self._lock:
            regions = [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in self._regions.values()
            ]
        return select_regions(regions, name)

    def unregister(self, name: str = "") -> None:
        """Unregister one region (unknown names are fine, as in Triton), or all when `name` is
        empty; a region a request holds goes when that request is done."""
        with self._lock:
            names = list(self._regions) if not name else [name] if name in self._regions else []
            for region_name in names:
                region = self._regions[region_name]
                region.unregistered = True
                if not region.users:
                    self._drop(region)

    def _drop(self, region: _Region) -> None:
        if self._regions.get(region.name) is region:
            del self._regions[region.name]
        region.mapping.close()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep every region the request reads or writes inside this block registered until
        the block ends (one request: decode, inference, encode)."""
        held: list[_Region] = []
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            with self._lock:
                for region in held:
                    region.users -= 1
                    if not region.users and region.unregistered:
                        self._drop(region)

    def read(self, reference: SharedMemoryReference) -> bytes:
        """A copy of the referenced bytes (the client may reuse its region at once)."""
        with self._lock:
            region, begin = self._locate(reference)
            return region.mapping[begin : begin + reference.byte_size]

    def write(self, reference: SharedMemoryReference, tensor: str, data: bytes) -> None:
        """Copy an output's wire bytes into the referenced place."""
        if len(data) > reference.byte_size:
            raise invalid(
                f"shared memory size specified with the request for output '{tensor}' "
                f"({reference.byte_size} bytes) should be at least {len(data)} bytes "
                "to hold the results"
            )
        with self._lock:
            region, begin = self._locate(reference)
            region.mapping[begin : begin + len(data)] = data

    def check(self, reference: SharedMemoryReference) -> None:
        """Fail now, before inference, if the reference does not fit a registered region."""
        with self._lock:
            self._locate(reference)

    def _locate(self, reference: SharedMemoryReference) -> tuple[_Region, int]:
        region = self._regions.get(reference.region)
        if region is None:
            raise ServingError(
                ErrorKind.NOT_FOUND, f"Unable to find shared memory region: '{reference.region}'"
            )
        held = _HELD.get()
        if held is not None and all(other is not region for other in held):
            region.users += 1
            held.append(region)
        if reference.offset >= region.byte_size:
            raise invalid(
                f"Invalid offset for shared memory region: '{reference.region}' (offset "
                f"{reference.offset} >= the region's {region.byte_size} bytes)"
            )
        if reference.byte_size > _SIZE_MAX - reference.offset:  # Triton's words
            raise invalid(
                f"Integer overflow detected: byte_size ({reference.byte_size}) + offset "
                f"({reference.offset}) exceeds the largest size a region can have"
            )
        if reference.offset + reference.byte_size > region.byte_size:
            raise invalid(
                f"Invalid offset + byte size for shared memory region: "
                f"'{reference.region}' (offset {reference.offset} + byte size "
                f"{reference.byte_size} > the region's {region.byte_size} bytes)"
            )
        return region, region.start + reference.offset

    def close(self) -> None:
        """Unmap every region (server shutdown)."""
        self.unregister()
