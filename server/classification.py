"""Triton's classification extension: replace an output with its top-N "value:index[:label]"."""

from __future__ import annotations

import numpy as np

from server.errors import ErrorKind, ServingError


def classify(
    array: np.ndarray, count: int, batched: bool, labels: list[str] | None = None
) -> np.ndarray:
    """Top-`count` classes per batch row as a BYTES tensor, formatted like Triton's C++."""
    if array.dtype.kind not in "iuf" or array.dtype == np.float16:
        raise ServingError(
            ErrorKind.INVALID_ARG,
            f"class result not available for output of datatype {array.dtype}",
        )
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    result = np.empty((rows.shape[0], k), dtype=np.object_)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r]):
            value = rows[r, index]
            text = f"{value:f}:{index}" if rows.dtype.kind == "f" else f"{value}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            result[r, c] = text.encode()
    return result if batched else result.reshape(k)
