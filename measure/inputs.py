"""Input tensors for the load: an .npz file, random or zero, shaped by --shape and --batch-size.

As in perf_analyzer, `--shape NAME:DIMS` gives the dims without the batch dim, and is needed for
every dim the model leaves open (-1) unless the data file fixes it. An .npz holds one array per
input; for a batching model its first axis is samples, and the requests take `batch_size`
consecutive samples each (a few distinct requests, cycled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from measure.model_info import BenchError, ModelInfo, TensorInfo

MAX_DISTINCT_REQUESTS = 16
RANDOM_INT_HIGH = 16  # random integer inputs stay small: token ids and indices remain valid
BYTES_LENGTH = 8

NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class InputSet:
    """The distinct requests' tensors: `requests[i][input name]` includes the batch dim."""

    requests: tuple[dict[str, np.ndarray], ...]
    batch_size: int


def parse_shapes(values: list[str]) -> dict[str, tuple[int, ...]]:
    """`NAME:D1,D2` (repeatable) -> {NAME: (D1, D2)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            parsed = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            parsed = ()
        if not sep or not name or not parsed or any(d < 0 for d in parsed):
            raise BenchError(f"--shape '{value}': expected NAME:DIMS such as tokens:64 or x:3,224")
        shapes[name] = parsed
    return shapes


def _check_batch(model: ModelInfo, batch_size: int) -> None:
    if batch_size < 1:
        raise BenchError("--batch-size must be at least 1")
    if model.max_batch_size == 0 and batch_size != 1:
        raise BenchError(f"model '{model.name}' does not batch (max_batch_size 0): --batch-size 1")
    if model.max_batch_size > 0 and batch_size > model.max_batch_size:
        raise BenchError(
            f"--batch-size {batch_size} exceeds the model's max_batch_size {model.max_batch_size}"
        )


def _resolved_dims(tensor: TensorInfo, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    dims = shapes.get(tensor.name, tensor.dims)
    if tensor.name in shapes and len(dims) != len(tensor.dims) and tensor.dims:
        raise BenchError(
            f"--shape {tensor.name}:{','.join(map(str, dims))} has {len(dims)} dims; the model "
            f"declares {len(tensor.dims)} {list(tensor.dims)} (without the batch dim)"
        )
    if tensor.name not in shapes:
        for declared, given in zip(tensor.dims, dims, strict=True):
            if declared >= 0 and given != declared:
                raise BenchError(f"--shape for '{tensor.name}' conflicts with {list(tensor.dims)}")
    if any(d < 0 for d in dims):
        raise BenchError(
            f"input '{tensor.name}' has dynamic dims {list(tensor.dims)}: pass "
            f"--shape {tensor.name}:DIMS (without the batch dim) or --input-data FILE.npz"
        )
    return dims


def generated(
    tensor: TensorInfo, shape: tuple[int, ...], kind: str, rng: np.random.Generator
) -> np.ndarray:
    """A random or zero tensor of the input's datatype."""
    if tensor.datatype not in NUMPY_TYPES:
        raise BenchError(f"input '{tensor.name}': datatype {tensor.datatype} is not supported")
    dtype = NUMPY_TYPES[tensor.datatype]
    if tensor.datatype == "BYTES":
        count = int(np.prod(shape))
        if kind == "zero":
            items = [b"0"] * count
        else:
            letters = rng.integers(97, 123, size=(count, BYTES_LENGTH), dtype=np.uint8)
            items = [row.tobytes() for row in letters]
        return np.array(items, dtype=np.object_).reshape(shape)
    if kind == "zero":
        return np.zeros(shape, dtype=dtype)
    if tensor.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, RANDOM_INT_HIGH, size=shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def build_inputs(
    model: ModelInfo,
    source: str,
    shapes: dict[str, tuple[int, ...]],
    batch_size: int,
    seed: int = 0,
) -> InputSet:
    """The distinct requests for `source` = `random`, `zero` or a path to an .npz file."""
    _check_batch(model, batch_size)
    unknown = set(shapes) - {t.name for t in model.inputs}
    if unknown:
        raise BenchError(
            f"--shape names unknown input(s) {sorted(unknown)}; the model's inputs are "
            f"{[t.name for t in model.inputs]}"
        )
    batching = model.max_batch_size != 0
    if source in ("random", "zero"):
        rng = np.random.default_rng(seed)
        requests = []
        for _ in range(MAX_DISTINCT_REQUESTS if source == "random" else 1):
            tensors = {}
            for tensor in model.inputs:
                if tensor.optional and tensor.name not in shapes:
                    continue
                dims = _resolved_dims(tensor, shapes)
                shape = (batch_size, *dims) if batching else dims
                tensors[tensor.name] = generated(tensor, shape, source, rng)
            requests.append(tensors)
        return InputSet(tuple(requests), batch_size)
    return _from_file(model, Path(source), batch_size)


def _from_file(model: ModelInfo, path: Path, batch_size: int) -> InputSet:
    if not path.is_file():
        raise BenchError(f"--input-data: '{path}' is not a file (or say random or zero)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise BenchError(f"--input-data: cannot read '{path}' as .npz: {exc}") from exc
    required = [t for t in model.inputs if not t.optional or t.name in arrays]
    missing = [t.name for t in required if t.name not in arrays]
    if missing:
        raise BenchError(f"--input-data '{path}' has no array for input(s) {missing}")
    if model.max_batch_size == 0:
        tensors = {t.name: _typed(t, arrays[t.name]) for t in required}
        return InputSet((tensors,), batch_size)
    counts = {len(arrays[t.name]) for t in required}
    if len(counts) != 1:
        raise BenchError(f"--input-data: the arrays disagree on the number of samples ({counts})")
    samples = counts.pop()
    if samples < batch_size:
        raise BenchError(
            f"--input-data has {samples} samples, fewer than --batch-size {batch_size}"
        )
    requests = []
    for index in range(min(samples // batch_size, MAX_DISTINCT_REQUESTS)):
        rows = slice(index * batch_size, (index + 1) * batch_size)
        requests.append({t.name: _typed(t, arrays[t.name][rows]) for t in required})
    return InputSet(tuple(requests), batch_size)


def _typed(tensor: TensorInfo, array: np.ndarray) -> np.ndarray:
    if tensor.datatype not in NUMPY_TYPES:
        raise BenchError(f"input '{tensor.name}': datatype {tensor.datatype} is not supported")
    if tensor.datatype == "BYTES":
        return np.array(
            [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)],
            dtype=np.object_,
        ).reshape(array.shape)
    return np.ascontiguousarray(array.astype(NUMPY_TYPES[tensor.datatype], copy=False))
