"""A bad request cannot fail its batch-mates: when a batched execution fails, find the culprits.

The batch is bisected: each half is re-executed on its own, a half that succeeds delivers its
requests' outputs, a half that fails is split again, and a lone request that fails gets its own
error (400 when the runtime says the data is at fault, else 500). With k bad requests among n this
costs at most about 2k·log2(n/k) extra executions, never more than 2n - 2, each smaller than the
batch; a batch that does not fail pays nothing (the search starts only in the failure path).

It is not attempted when the failure cannot be data-dependent: a resource exhaustion (out of
memory on the GPU or host), an unavailable upstream or I/O error (UNAVAILABLE), a cancellation or
an unsupported feature; then the whole batch fails, as it does in Triton.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.errors import ErrorKind, ServingError

Member = TypeVar("Member")

# kinds whose failures may depend on one request's data
ISOLATED_KINDS = frozenset({ErrorKind.INVALID_ARG, ErrorKind.INTERNAL, ErrorKind.UNKNOWN})
# messages of failures that are about the machine, not the data: retrying smaller only wastes
# time (or memory) and would blame innocent requests
_RESOURCE_FAILURE = re.compile(
    r"out of memory|failed to allocate|cannot allocate|\bOOM\b|CUDA error|CUDA failure|"
    r"cudaError|CUBLAS_STATUS_ALLOC|CUDNN_STATUS_ALLOC|resource exhausted|not a batch dimension",
    re.IGNORECASE,
)

# What `run(members)` returns for a successful execution: per-member outputs, the compute
# timings (input, infer, output) in seconds, and the rows executed.
RunResult = tuple[list[dict[str, Any]], tuple[float, float, float], int]


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution during the search (the failed batch first), for the statistics."""

    rows: int
    request_count: int
    timings: tuple[float, float, float]
    success: bool


@dataclass(slots=True)
class IsolatedBatch:
    """The outcome of a failed batch after the search: per member, its outputs or its error."""

    error: BaseException  # the batch's original failure
    outputs: dict[int, tuple[dict[str, Any], tuple[float, float, float], int]] = field(
        default_factory=dict
    )
    errors: dict[int, ServingError] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)


def as_serving_error(error: BaseException) -> ServingError:
    """A runtime failure as the client sees it (an unknown exception is INTERNAL: 500)."""
    if isinstance(error, ServingError):
        return error
    return ServingError(ErrorKind.INTERNAL, f"model execution failed: {error}")


def worth_isolating(error: BaseException) -> bool:
    """True when a batch failure may be caused by one request's data."""
    if isinstance(error, MemoryError):
        return False
    serving = as_serving_error(error)
    return serving.kind in ISOLATED_KINDS and not _RESOURCE_FAILURE.search(serving.message)


def isolate_failure(
    error: BaseException,
    members: Sequence[Member],
    rows_of: Callable[[Member], int],
    run: Callable[[list[Member]], RunResult],
) -> IsolatedBatch:
    """Bisect a failed batch of `members` with `run` (which raises when a part fails)."""
    outcome = IsolatedBatch(error)
    outcome.executions.append(
        Execution(sum(rows_of(m) for m in members), len(members), (0.0, 0.0, 0.0), False)
    )
    pending = _halves(list(range(len(members))))
    while pending:
        part = pending.pop()
        started = time.perf_counter()
        try:
            per_member, timings, rows = run([members[i] for i in part])
        except Exception as part_error:  # the runtime's own failure for this part
            elapsed = time.perf_counter() - started
            outcome.executions.append(
                Execution(
                    sum(rows_of(members[i]) for i in part), len(part), (0.0, elapsed, 0.0), False
                )
            )
            if len(part) == 1:
                outcome.errors[part[0]] = as_serving_error(part_error)
            elif worth_isolating(part_error):
                pending.extend(_halves(part))
            else:  # the failure turned out not to be about the data: the part fails whole
                for index in part:
                    outcome.errors[index] = as_serving_error(part_error)
            continue
        outcome.executions.append(Execution(rows, len(part), timings, True))
        for index, outputs in zip(part, per_member, strict=True):
            outcome.outputs[index] = (outputs, timings, rows)
    return outcome


def _halves(indices: list[int]) -> list[list[int]]:
    """The two halves of a group, the first half last (popped, so it runs first)."""
    middle = len(indices) // 2
    return [indices[middle:], indices[:middle]]
