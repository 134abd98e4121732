"""Per-version inference statistics in Triton's statistics-extension schema.

Updated on the event loop only (no locks); read by the statistics endpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A Triton duration statistic: how many, and their total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchDurations:
    """Compute durations of executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStatistics:
    """Counters for one model version."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    def record_success(
        self,
        rows: int,
        request_s: float,
        queue_s: float,
        compute_input_s: float,
        compute_infer_s: float,
        compute_output_s: float,
    ) -> None:
        """One successful request."""
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += rows
        self.success.add(request_s)
        self.queue.add(queue_s)
        self.compute_input.add(compute_input_s)
        self.compute_infer.add(compute_infer_s)
        self.compute_output.add(compute_output_s)

    def record_cache_hit(self, request_s: float, lookup_s: float) -> None:
        """A request answered from the response cache: a success and a queue entry (Triton
        counts both), never an inference or compute."""
        self.last_inference_ms = int(time.time() * 1000)
        self.success.add(request_s)
        self.queue.add(0.0)
        self.cache_hit.add(lookup_s)

    def record_cache_miss(self, lookup_and_insert_s: float) -> None:
        """The cache's share of a request that missed (its lookup and the insertion)."""
        self.cache_miss.add(lookup_and_insert_s)

    def record_failure(self, request_s: float) -> None:
        """One failed request."""
        self.fail.add(request_s)

    def record_execution(
        self,
        batch_size: int,
        compute_input_s: float,
        compute_infer_s: float,
        compute_output_s: float,
    ) -> None:
        """One model execution."""
        self.execution_count += 1
        durations = self.batches.setdefault(batch_size, BatchDurations())
        durations.compute_input.add(compute_input_s)
        durations.compute_infer.add(compute_infer_s)
        durations.compute_output.add(compute_output_s)

    def as_json(self) -> dict[str, Any]:
        """Triton's `model_stats[]` entry."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                "cache_hit": self.cache_hit.as_json(),
                "cache_miss": self.cache_miss.as_json(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": d.compute_input.as_json(),
                    "compute_infer": d.compute_infer.as_json(),
                    "compute_output": d.compute_output.as_json(),
                }
                for size, d in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
