"""The ONNX model's inputs as reference building needs them: check the data, run the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ONNX Runtime type strings -> numpy dtypes.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
CHUNK_ROWS = 256
IGNORED_NAMES = ("labels",)


class ReferenceDataError(ValueError):
    """Reference data or a reference.npz file is unusable; the message says why."""


def _error(message: str) -> ReferenceDataError:
    return ReferenceDataError(message)


@dataclass(frozen=True)
class ModelTensors:
    """Input names, dtypes and shapes (None for dynamic dims) of an ONNX model."""

    inputs: dict[str, tuple[Any, tuple[int | None, ...]]]
    batched: bool  # the first dim of every input is dynamic: rows go in together

    def input_kinds(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (numpy kind, row shape with -1 for dynamic dims)."""
        rows = {n: shape[1:] if self.batched else shape for n, (_, shape) in self.inputs.items()}
        return {
            name: (np.dtype(dtype).kind, tuple(-1 if d is None else d for d in rows[name]))
            for name, (dtype, _) in self.inputs.items()
        }

    def validate(self, data: Mapping[str, np.ndarray], min_rows: int) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes of reference data; arrays cast to the model's dtypes."""
        given = {k for k in data if k not in IGNORED_NAMES}
        if given != set(self.inputs):
            raise _error(
                f"reference data has inputs {sorted(given)}, the model expects "
                f"{sorted(self.inputs)}"
            )
        checked: dict[str, np.ndarray] = {}
        for name, (dtype, shape) in self.inputs.items():
            array = np.asarray(data[name])
            row_shape = shape[1:] if self.batched else shape
            if array.ndim != len(row_shape) + 1:
                raise _error(
                    f"input {name!r}: expected rows of shape {_show(row_shape)}, got "
                    f"an array of shape {array.shape}"
                )
            for got, want in zip(array.shape[1:], row_shape, strict=True):
                if want is not None and got != want:
                    raise _error(
                        f"input {name!r}: expected rows of shape {_show(row_shape)}, "
                        f"got {array.shape[1:]}"
                    )
            if array.dtype.kind != np.dtype(dtype).kind:
                raise _error(
                    f"input {name!r}: expected {np.dtype(dtype).name} data, got {array.dtype.name}"
                )
            checked[name] = array.astype(dtype, copy=False)
        rows = {a.shape[0] for a in checked.values()}
        if len(rows) != 1:
            raise _error(f"inputs have different row counts: {sorted(rows)}")
        if rows.pop() < min_rows:
            raise _error(f"reference data needs at least {min_rows} rows")
        return checked


def _show(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _session(model_path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def read_model_tensors(model_path: Path) -> ModelTensors:
    """Input specs of the ONNX model at `model_path`."""
    if not model_path.is_file():
        raise _error(f"no model file at {model_path}")
    inputs: dict[str, tuple[Any, tuple[int | None, ...]]] = {}
    for node in _session(model_path).get_inputs():
        if node.type not in _ORT_DTYPES:
            raise _error(f"input {node.name!r} has type {node.type}, not supported for drift")
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in node.shape)
        inputs[node.name] = (_ORT_DTYPES[node.type], shape)
    batched = bool(inputs) and all(s and s[0] is None for _, s in inputs.values())
    return ModelTensors(inputs, batched)


def run_model(
    model_path: Path,
    tensors: ModelTensors,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """All outputs of the model over the rows of `inputs` (row dimension first)."""
    session = _session(model_path)
    names = [o.name for o in session.get_outputs()]
    rows = next(iter(inputs.values())).shape[0]
    step = CHUNK_ROWS if tensors.batched else 1
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, rows, step):
        feed = {
            k: v[start : start + step] if tensors.batched else v[start] for k, v in inputs.items()
        }
        for name, value in zip(names, session.run(names, feed), strict=True):
            array = np.asarray(value)
            parts[name].append(array if tensors.batched else array[None])
    return {n: np.concatenate(p) for n, p in parts.items()}
