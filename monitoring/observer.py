"""The seam between the serving core and monitors (metrics, drift).

The server calls `observe(record)` once per finished request (`RequestRecord`), once per model
execution (`BatchRecord`), and on each model version state change (`ModelEventRecord`).
Observers must not block: they update counters, or copy into bounded buffers that a background
worker drains. This module imports nothing of the project, only numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Triton's `reason` label values on nv_inference_request_failure.
FAILURE_REJECTED = "REJECTED"  # scheduler rejection: queue full, queue timeout, shutting down
FAILURE_CANCELED = "CANCELED"  # the client went away
FAILURE_BACKEND = "BACKEND"  # the runtime raised
FAILURE_OTHER = "OTHER"  # validation and everything else


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class RequestRecord:
    """One inference request, successful or not.

    Durations are in seconds. `inputs`/`outputs` are the request's own rows (views, read-only by
    contract) on success; None on failure. `batch_size` is the request's rows (1 when the model
    does not batch).
    """

    model: str
    version: str
    protocol: str  # "http" | "grpc"
    success: bool
    batch_size: int
    request_duration_s: float
    queue_duration_s: float = 0.0
    compute_input_duration_s: float = 0.0
    compute_infer_duration_s: float = 0.0
    compute_output_duration_s: float = 0.0
    failure_reason: str | None = None
    inputs: Mapping[str, np.ndarray] | None = None
    outputs: Mapping[str, np.ndarray] | None = None
    # response cache: None when the model does not use it; True for a hit (no inference, no
    # compute: outputs stay None), False for a miss; the cache's lookup (+ insertion) time
    cache_hit: bool | None = None
    cache_duration_s: float = 0.0


# not frozen: built for every request, and a frozen dataclass's __init__ costs about 4x
# (object.__setattr__ per field); treat instances as immutable
@dataclass(slots=True)
class BatchRecord:
    """One model execution on a formed batch."""

    model: str
    version: str
    batch_size: int  # rows in the executed batch
    request_count: int  # requests merged into it
    compute_input_duration_s: float
    compute_infer_duration_s: float
    compute_output_duration_s: float


@dataclass(frozen=True, slots=True)
class ModelEventRecord:
    """A model version changed state: READY (loaded), UNAVAILABLE (failed or unloaded)."""

    model: str
    version: str
    state: str  # "READY" | "UNAVAILABLE" | "LOADING" | "UNLOADING"
    version_path: str | None = None  # REPO/NAME/<version> when the version has a folder
    load_duration_s: float | None = None
    reason: str = ""
    # Wire specs of the model, so monitors can describe inputs/outputs without the server:
    # name -> (KServe datatype, shape with -1 for dynamic dims, batch dim included if batching).
    inputs: Mapping[str, tuple[str, tuple[int, ...]]] | None = None
    outputs: Mapping[str, tuple[str, tuple[int, ...]]] | None = None
    max_batch_size: int = 0


ObservedRecord = RequestRecord | BatchRecord | ModelEventRecord


class InferenceObserver(Protocol):
    """Receives records from the server; must return quickly and never raise into the caller."""

    def observe(self, record: ObservedRecord) -> None:
        """Take note of one record."""
