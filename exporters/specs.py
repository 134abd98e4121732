"""Input/output specs: `NAME:DTYPE:DIMS` parsing, KServe datatypes, and `.npz` data files."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import ExportError
from server.repository_format import NUMPY_DTYPE_BY_DATATYPE as SERVER_NUMPY_DTYPES

# KServe datatype -> numpy dtype, for the tensors a torch model can take or produce (the server's
# table, less the unsigned wide integers and BYTES that torch has no tensors for).
TORCH_DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
NUMPY_DTYPE_BY_DATATYPE: dict[str, np.dtype[Any]] = {
    name: SERVER_NUMPY_DTYPES[name] for name in TORCH_DATATYPES
}
DATATYPE_BY_NUMPY_DTYPE: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in NUMPY_DTYPE_BY_DATATYPE.items()
}
LABELS_KEY = "labels"


@dataclass(frozen=True)
class IOSpec:
    """A model input or output: name, KServe datatype and dims without the batch dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this tensor."""
        return NUMPY_DTYPE_BY_DATATYPE[self.datatype]

    def __str__(self) -> str:
        return f"{self.name}:{self.datatype}:{','.join(str(d) for d in self.dims)}"


def parse_input_spec(text: str) -> IOSpec:
    """Parse `NAME:DTYPE:DIMS` (DIMS without the batch dim, e.g. `x:FP32:1,28,28`)."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ExportError(
            f"--input '{text}' does not parse: expected NAME:DTYPE:DIMS "
            "such as x:FP32:1,28,28 (DIMS without the batch dim)",
            stage="load",
        )
    name, datatype, dims_text = parts[0], parts[1].upper(), parts[2]
    if datatype not in NUMPY_DTYPE_BY_DATATYPE:
        known = ", ".join(NUMPY_DTYPE_BY_DATATYPE)
        raise ExportError(
            f"--input '{text}': unknown datatype '{parts[1]}' (one of {known})", stage="load"
        )
    try:
        dims = tuple(int(d) for d in dims_text.split(",")) if dims_text else ()
    except ValueError:
        raise ExportError(
            f"--input '{text}': DIMS must be comma-separated integers", stage="load"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise ExportError(
            f"--input '{text}': DIMS must be one or more positive sizes (only the "
            "batch dim, which you leave out, is dynamic)",
            stage="load",
        )
    return IOSpec(name, datatype, dims)


def spec_of_array(name: str, array: np.ndarray) -> IOSpec:
    """The spec of a batched array (first axis is the batch)."""
    datatype = DATATYPE_BY_NUMPY_DTYPE.get(array.dtype)
    if datatype is None:
        raise ExportError(
            f"array '{name}' has dtype {array.dtype}, which ferry cannot export", stage="load"
        )
    if array.ndim < 2 or array.shape[0] < 1:
        raise ExportError(
            f"array '{name}' must have a batch axis and at least one more axis "
            f"(shape {array.shape})",
            stage="load",
        )
    return IOSpec(name, datatype, tuple(int(d) for d in array.shape[1:]))


def load_npz(path: Path, option: str) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` file (no pickled objects)."""
    if not path.is_file():
        raise ExportError(f"{option} {path}: file not found", stage="load")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ExportError(
            f"{option} {path}: not a readable .npz file ({exc})", stage="load"
        ) from None


def check_data_matches(
    data: Mapping[str, np.ndarray], specs: Sequence[IOSpec], option: str
) -> None:
    """Every input is in the data file, with the declared dtype and dims."""
    for spec in specs:
        if spec.name not in data:
            raise ExportError(
                f"{option} has no array '{spec.name}' (it holds: "
                f"{', '.join(sorted(data)) or 'nothing'})",
                stage="load",
            )
        actual = spec_of_array(spec.name, data[spec.name])
        if actual.datatype != spec.datatype or actual.dims != spec.dims:
            raise ExportError(
                f"{option} array '{spec.name}' is {actual}, the input is {spec}", stage="load"
            )
