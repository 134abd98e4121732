"""In-process values that flow through the serving core: tensor specs, requests and responses.

These are plain dataclasses holding numpy arrays (frozen, but for the per-request ones): no
pydantic and no wire formats on the hot path. Datatype names are KServe v2's (`FP32`, `INT64`,
`BYTES`...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Tensors = Mapping[str, np.ndarray]
ParameterValue = str | int | float | bool

# KServe v2 datatype -> numpy dtype. BYTES tensors are numpy object arrays of `bytes`.
NUMPY_DTYPE_BY_DATATYPE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
DATATYPE_BY_NUMPY_DTYPE: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in NUMPY_DTYPE_BY_DATATYPE.items()
}
# Element size in bytes of the fixed-size datatypes (BYTES is variable, BF16 has no numpy dtype).
ELEMENT_SIZE_BY_DATATYPE: dict[str, int] = {
    name: dtype.itemsize for name, dtype in NUMPY_DTYPE_BY_DATATYPE.items() if name != "BYTES"
}
ELEMENT_SIZE_BY_DATATYPE["BF16"] = 2
ALL_DATATYPES = frozenset(NUMPY_DTYPE_BY_DATATYPE) | {"BF16"}


def datatype_of(array: np.ndarray) -> str:
    """KServe datatype of a numpy array (bytes/str object arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return DATATYPE_BY_NUMPY_DTYPE[array.dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no KServe v2 datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, KServe datatype and shape of a model input or output; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False  # an input the request may leave out (config `optional: true`)


# not frozen: built for every output a request names (see InferenceRequest below)
@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output encoding parameters."""

    name: str
    binary_data: bool | None = None
    classification: int = 0


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class InferenceRequest:
    """A decoded inference request, transport-independent."""

    model_name: str
    model_version: str
    inputs: Tensors
    id: str = ""
    requested_outputs: tuple[RequestedOutput, ...] | None = None
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    priority: int = 0
    timeout_us: int = 0
    protocol: str = "http"
    # the request's sequence parameters (Python models see them as correlation_id and flags)
    sequence_id: int | str = 0
    sequence_start: bool = False
    sequence_end: bool = False
    # request context the transports pass down for logs and traces ("" when not asked for)
    client: str = ""  # the client's address, host:port
    traceparent: str = ""  # W3C trace context of the caller


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class InferenceResponse:
    """Outputs of one request, in the order they are to be sent back."""

    model_name: str
    model_version: str
    outputs: Tensors
    id: str = ""
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    # False on all but the last response of a stream (decoupled models); a final response with
    # no outputs is the model's FINAL flag alone
    final: bool = True
