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


DEFAULT_DIM_PREFIX = "dim_"


@dataclass(frozen=True)
class IOSpec:
    """A model input or output: name, KServe datatype and dims without the batch dim.

    A dim is a size (int), or the name of a variable dim (str, `-1` in config.pbtxt). Dims
    sharing a name have the same size in every request. `-1` stands for a variable dim not named
    yet (`name_variable_dims` names it)."""

    name: str
    datatype: str
    dims: tuple[int | str, ...]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this tensor."""
        return NUMPY_DTYPE_BY_DATATYPE[self.datatype]

    @property
    def config_dims(self) -> tuple[int, ...]:
        """The dims as config.pbtxt writes them: -1 for a variable dim."""
        return tuple(d if isinstance(d, int) else -1 for d in self.dims)

    @property
    def variable_axes(self) -> dict[int, str]:
        """Axis (the batch is axis 0) -> name, for every named variable dim."""
        return {axis: d for axis, d in enumerate(self.dims, start=1) if isinstance(d, str)}

    def shape(self, rows: int, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape of `rows` rows with variable dims at `sizes`."""
        return (rows, *(d if isinstance(d, int) else sizes[d] for d in self.dims))

    def __str__(self) -> str:
        return f"{self.name}:{self.datatype}:{','.join(str(d) for d in self.dims)}"


def parse_input_spec(text: str) -> IOSpec:
    """Parse `NAME:DTYPE:DIMS` (DIMS without the batch dim, e.g. `x:FP32:1,28,28`).

    A dim is a size, `-1` (variable) or a name (variable; inputs sharing it have equal sizes).
    """
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
    dims: list[int | str] = []
    for item in dims_text.split(",") if dims_text else []:
        item = item.strip()
        if item.isidentifier():
            dims.append(item)
            continue
        try:
            size = int(item)
        except ValueError:
            raise ExportError(
                f"--input '{text}': each dim is a size, -1 (variable) or a name (variable)",
                stage="load",
            ) from None
        if size == 0 or size < -1:
            raise ExportError(
                f"--input '{text}': a dim is a positive size, -1 or a name, not {size}",
                stage="load",
            )
        dims.append(size)
    if not dims:
        raise ExportError(
            f"--input '{text}': DIMS needs one or more dims besides the batch dim, which you "
            "leave out (it is always variable)",
            stage="load",
        )
    return IOSpec(name, datatype, tuple(dims))


def parse_dynamic_dim(text: str) -> tuple[str, int, str]:
    """Parse `--dynamic-dim INPUT:AXIS=NAME` (AXIS counts the batch as 0)."""
    head, _, dim_name = text.partition("=")
    input_name, _, axis_text = head.rpartition(":")
    if not input_name or not axis_text.isdigit() or not dim_name.isidentifier():
        raise ExportError(
            f"--dynamic-dim '{text}' does not parse: expected INPUT:AXIS=NAME such as "
            "tokens:1=seq_len (AXIS counts the batch as 0; NAME is an identifier)",
            stage="load",
        )
    if int(axis_text) == 0:
        raise ExportError(
            f"--dynamic-dim '{text}': axis 0 is the batch, which is always variable",
            stage="load",
        )
    return input_name, int(axis_text), dim_name


def parse_dim_sizes(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `--dim-sizes NAME=N,N...` (sizes to export and check a variable dim at)."""
    name, _, sizes_text = text.partition("=")
    try:
        sizes = tuple(int(s) for s in sizes_text.split(","))
    except ValueError:
        sizes = ()
    if not name.isidentifier() or not sizes or any(s < 1 for s in sizes):
        raise ExportError(
            f"--dim-sizes '{text}' does not parse: expected NAME=N,N,... such as "
            "seq_len=16,5 (the first size is used to export, all of them to check parity)",
            stage="load",
        )
    if len(set(sizes)) != len(sizes):
        raise ExportError(f"--dim-sizes '{text}': the sizes must differ", stage="load")
    return name, sizes


def name_variable_dims(
    specs: Sequence[IOSpec], dynamic_dims: Sequence[tuple[str, int, str]]
) -> list[IOSpec]:
    """Apply `--dynamic-dim`s, then name every `-1` left: `dim_<axis>`, shared by axis.

    Unnamed variable dims at the same axis share a size (the usual case: input_ids,
    attention_mask and token_type_ids); name them to make them independent.
    """
    dims = {spec.name: list(spec.dims) for spec in specs}
    for input_name, axis, dim_name in dynamic_dims:
        if input_name not in dims:
            raise ExportError(
                f"--dynamic-dim {input_name}:{axis}={dim_name}: no input '{input_name}' "
                f"(inputs: {', '.join(dims)})",
                stage="load",
            )
        if axis > len(dims[input_name]):
            raise ExportError(
                f"--dynamic-dim {input_name}:{axis}={dim_name}: '{input_name}' has axes 1 to "
                f"{len(dims[input_name])} besides the batch (axis 0)",
                stage="load",
            )
        dims[input_name][axis - 1] = dim_name
    return [
        IOSpec(
            spec.name,
            spec.datatype,
            tuple(
                f"{DEFAULT_DIM_PREFIX}{axis}" if d == -1 else d
                for axis, d in enumerate(dims[spec.name], start=1)
            ),
        )
        for spec in specs
    ]


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
        if actual.datatype != spec.datatype or len(actual.dims) != len(spec.dims):
            raise ExportError(
                f"{option} array '{spec.name}' is {actual}, the input is {spec}", stage="load"
            )
        for got, want in zip(actual.dims, spec.dims, strict=True):
            if isinstance(want, int) and want != -1 and got != want:
                raise ExportError(
                    f"{option} array '{spec.name}' is {actual}, the input is {spec}", stage="load"
                )


def example_dim_sizes(data: Mapping[str, np.ndarray], specs: Sequence[IOSpec]) -> dict[str, int]:
    """The size of every named variable dim in a data file (equal wherever the name is used)."""
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    for spec in specs:
        shape = data[spec.name].shape
        for axis, dim_name in spec.variable_axes.items():
            size = int(shape[axis])
            if sizes.setdefault(dim_name, size) != size:
                raise ExportError(
                    f"--example: variable dim '{dim_name}' is {sizes[dim_name]} in "
                    f"{where[dim_name]} but {size} in '{spec.name}' axis {axis}; inputs that "
                    "share a dim name must have equal sizes",
                    stage="load",
                )
            where.setdefault(dim_name, f"'{spec.name}' axis {axis}")
    return sizes
