"""A shared-memory ring of monitored rows from a serving process's event loop to the drift
evaluator process.

Why: sent over the evaluator's socket, every monitored row cost the serving process a feeder
thread's stacking, pickling and sending, GIL time taken from the event loop that showed in the
tail latency (issue 17). Through the ring the event loop copies a request's rows into memory the
evaluator reads directly; nothing else runs in the serving process for them.

The ring is a file in /dev/shm mapped by both sides: a header of int64 counters (`written`,
`read`), then one region of `capacity` rows for each tensor the drift signals read. Only tensors
of a fixed row shape and a fixed-size type fit (`ring_layout`); the others keep the socket path.

One writer (the event loop) and one reader (the evaluator's loop):
- the writer copies a request's rows at `written % capacity` (in two parts when they wrap), then
  advances `written`; rows that do not fit are counted dropped, a request never waits;
- the reader copies rows out from `read` up to a `written` it saw, then advances `read`.
The writer stores its rows before it stores `written`, and x86-64 keeps stores in that order. On
CPUs that may not, the reader's timed passes read only up to the `written` it saw on its previous
pass (`settled`), a poll interval after those rows were written.

The evaluator unlinks the file as soon as it has mapped it, so no file is left behind when
either process dies; the writer unlinks it too when the evaluator never came.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from monitoring.observer import ModelEventRecord

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
# a container's /dev/shm is often 64 MB (Docker's default), shared with every process in it
MAX_RING_BYTES = 16 * 1024 * 1024
MIN_RING_ROWS = 40_000  # ~2 s of rows at 20,000 a second, however fast the windows close
PREFIX = "ferry-drift"
HEADER_BYTES = 64  # int64 written, int64 read; the rest keeps the regions 64-byte aligned
_WRITTEN, _READ = 0, 1

_ring_numbers = itertools.count()


@dataclass(frozen=True)
class RingTensor:
    """One tensor's region: its scope ("inputs" or "outputs"), name, dtype and row shape."""

    scope: str
    name: str
    dtype: str
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * np.prod(self.row_shape, dtype=np.int64))


@dataclass(frozen=True)
class RingLayout:
    """What a ring holds; the writer sends it to the reader with the file's path."""

    tensors: tuple[RingTensor, ...]
    capacity: int  # rows

    def offsets(self) -> list[int]:
        """Where each tensor's region starts, 64-byte aligned."""
        offsets, at = [], HEADER_BYTES
        for tensor in self.tensors:
            offsets.append(at)
            at += -(-tensor.row_bytes * self.capacity // 64) * 64
        return offsets

    @property
    def size(self) -> int:
        last = self.tensors[-1]
        return self.offsets()[-1] + last.row_bytes * self.capacity


def _fixed_size_dtype(datatype: str) -> str | None:
    """The little-endian numpy dtype of a KServe datatype of a fixed size; None for BYTES (rows
    vary in size), BF16 (numpy has none; tritonclient widens it) and unknown names."""
    numpy_type = triton_to_np_dtype(datatype) if datatype != "BF16" else None
    if numpy_type is None or np.dtype(numpy_type).hasobject:
        return None
    return str(np.dtype(numpy_type).newbyteorder("<").str)


def ring_layout(
    event: ModelEventRecord, tensors: tuple[tuple[str, str], ...], window: int
) -> RingLayout | None:
    """The ring for these (scope, name) tensors of a model version, or None when one of them
    has a dynamic row dimension, a variable-size type or no wire spec (those keep the socket)."""
    has_row_axis = event.max_batch_size > 0
    specs = {"inputs": event.inputs or {}, "outputs": event.outputs or {}}
    chosen = []
    for scope, name in tensors:
        spec = specs.get(scope, {}).get(name)
        dtype = _fixed_size_dtype(spec[0]) if spec is not None else None
        if spec is None or dtype is None:
            return None
        row_shape = tuple(spec[1][1:] if has_row_axis else spec[1])
        if any(d < 0 for d in row_shape):
            return None
        chosen.append(RingTensor(scope, name, dtype, row_shape))
    if not chosen:
        return None
    row_bytes = max(1, sum(t.row_bytes for t in chosen))
    capacity = min(max(MIN_RING_ROWS, 4 * window), MAX_RING_BYTES // row_bytes)
    return RingLayout(tuple(chosen), capacity) if capacity >= 2 * window else None


def sweep_orphans(prefix: str = PREFIX) -> int:
    """Remove the rings of serving processes that died before the evaluator mapped them (a
    SIGKILL skips their cleanup; a pod's /dev/shm outlives its containers); the count removed.
    A ring's name carries its writer's pid: only those of pids no longer alive go."""
    if SHM_DIR is None:
        return 0
    removed = 0
    for path in SHM_DIR.glob(f"{prefix}-*-*"):
        pid = path.name.removeprefix(f"{prefix}-").split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        except PermissionError:  # alive, someone else's
            pass
    return removed


def _views(buffer: mmap.mmap, layout: RingLayout) -> tuple[memoryview, list[np.ndarray]]:
    # the counters as a memoryview: reading one costs a third of a numpy element's read
    header = memoryview(buffer)[:16].cast("q")
    regions = [
        np.ndarray((layout.capacity, *t.row_shape), np.dtype(t.dtype), buffer, offset)
        for t, offset in zip(layout.tensors, layout.offsets(), strict=True)
    ]
    return header, regions


class RingWriter:
    """The serving process's end; `write` runs on the event loop."""

    def __init__(self, layout: RingLayout, prefix: str = PREFIX) -> None:
        if SHM_DIR is None:
            raise OSError("no /dev/shm for a drift ring")
        self.layout = layout
        self.path = str(SHM_DIR / f"{prefix}-{os.getpid()}-{next(_ring_numbers)}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # the pages now, or ENOSPC now: a full /dev/shm must refuse the ring (the rows take
            # the socket), not raise SIGBUS in the event loop at a later write
            os.posix_fallocate(fd, 0, layout.size)
            self._buffer = mmap.mmap(fd, layout.size)
        except BaseException:
            self.unlink()
            raise
        finally:
            os.close(fd)
        self._header, regions = _views(self._buffer, layout)
        self._capacity = layout.capacity
        # per tensor: (scope is inputs, name, dtype, row shape, region, its offset, row bytes)
        self._targets = [
            (
                t.scope == "inputs",
                t.name,
                np.dtype(t.dtype),
                t.row_shape,
                region,
                offset,
                t.row_bytes,
            )
            for t, region, offset in zip(layout.tensors, regions, layout.offsets(), strict=True)
        ]
        self._written = 0  # this side's copy of header[_WRITTEN]

    def write(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        rows: int,
        has_row_axis: bool,
    ) -> bool | None:
        """Copy a request's rows in: True when written, False when the ring has no room for
        them (the caller counts them dropped), None when its tensors do not have the layout's
        types and row shapes (the caller sends them the other way)."""
        arrays = []
        for is_input, name, dtype, row_shape, *_ in self._targets:
            array = (inputs if is_input else outputs).get(name)
            if array is None or array.dtype != dtype:
                return None
            shape = array.shape
            if has_row_axis:
                if shape[1:] != row_shape or shape[0] != rows:
                    return None
            elif shape != row_shape or rows != 1:
                return None
            arrays.append(array)
        written, capacity = self._written, self._capacity
        if written + rows - self._header[_READ] > capacity:
            return False
        start = written % capacity
        end = start + rows
        buffer = self._buffer
        for array, (_, _, _, row_shape, region, offset, row_bytes) in zip(
            arrays, self._targets, strict=True
        ):
            if end <= capacity:
                begin = offset + start * row_bytes
                try:  # a byte copy into the mapping: about a third of numpy's slice assignment
                    # ndarray has the buffer protocol; typeshed's Buffer wants __buffer__ (3.12)
                    buffer[begin : begin + rows * row_bytes] = array  # type: ignore[call-overload]
                    continue
                except ValueError:  # not C-contiguous
                    pass
            flat = array.reshape(rows, *row_shape)
            if end <= capacity:
                region[start:end] = flat
            else:
                split = capacity - start
                region[start:] = flat[:split]
                region[: end - capacity] = flat[split:]
        self._written = written + rows
        self._header[_WRITTEN] = self._written
        return True

    def unlink(self) -> None:
        """Remove the file (the mappings stay valid); the reader usually has already."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class RingReader:
    """The evaluator's end of one writer's ring."""

    def __init__(self, layout: RingLayout, path: str) -> None:
        self.layout = layout
        where = Path(path)
        if SHM_DIR is None or where.parent != SHM_DIR or not where.name.startswith(PREFIX):
            raise OSError(f"{path} is not a drift ring")  # the evaluator unlinks what it maps
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size != layout.size:
                raise OSError(f"drift ring {path} is not {layout.size} bytes")
            self._buffer = mmap.mmap(fd, layout.size)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._header, self._regions = _views(self._buffer, layout)
        self._read = self._header[_READ]
        self._seen = self._read  # `written` as the previous timed pass saw it

    def take(self, settled: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """Copy out the rows written so far (`settled`: only those written before the previous
        timed pass) and free their room; (inputs, outputs, rows)."""
        written = self._header[_WRITTEN]
        upto = self._seen if settled else written
        self._seen = written
        rows = upto - self._read
        joined: dict[str, dict[str, np.ndarray]] = {"inputs": {}, "outputs": {}}
        if rows <= 0:
            return joined["inputs"], joined["outputs"], 0
        capacity = self.layout.capacity
        start = self._read % capacity
        end = start + rows
        for tensor, region in zip(self.layout.tensors, self._regions, strict=True):
            if end <= capacity:
                copied = region[start:end].copy()
            else:
                copied = np.concatenate([region[start:], region[: end - capacity]])
            joined[tensor.scope][tensor.name] = copied
        self._read = upto
        self._header[_READ] = upto
        return joined["inputs"], joined["outputs"], rows
