"""How the workers pickle what they send each other (forwarded requests, submissions to a
model's owner, their answers): pickle with a dispatch table for the values on that path.

The default reductions cost more than the rest of a small request's trip: numpy pickles an
array through Python-level checks (about 4 µs each way for a [1, 64] FP32 array), and a slots
dataclass goes through copyreg's generic state. Here a numeric array travels as (dtype, shape,
its buffer), in band, and the request, response and timing dataclasses as their fields in
order. Anything else pickles as usual (object arrays, non-contiguous ones, every other type).
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import operator
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from server.batching import RequestTiming
from server.types import InferenceRequest, InferenceResponse


def _array_from(dtype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    return np.frombuffer(data, dtype).reshape(shape)


def _reduce_array(array: np.ndarray) -> Any:
    if array.dtype.hasobject or not array.flags.c_contiguous:
        return array.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    # a writable buffer unpickles as a bytearray, so the array is writable there too
    buffer = pickle.PickleBuffer(array)  # type: ignore[arg-type]  # (ndarray is a buffer)
    return _array_from, (array.dtype.str, array.shape, buffer)


def _by_fields(cls: type) -> Callable[[Any], Any]:
    fields = operator.attrgetter(*(field.name for field in dataclasses.fields(cls)))
    return lambda value: (cls, fields(value))


_REDUCERS = copyreg.dispatch_table.copy()
_REDUCERS[np.ndarray] = _reduce_array
for _type in (InferenceRequest, InferenceResponse, RequestTiming):
    _REDUCERS[_type] = _by_fields(_type)


class _Pickler(pickle.Pickler):
    dispatch_table = _REDUCERS


def dumps(value: Any) -> bytes:
    """`value` pickled for another worker of this server."""
    stream = io.BytesIO()
    _Pickler(stream, pickle.HIGHEST_PROTOCOL).dump(value)
    return stream.getvalue()


loads = pickle.loads
