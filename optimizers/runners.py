"""Run candidates in-process: an ONNX Runtime runner with fixed threads, and dataset batching."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.runtimes import Runtime

# Execution providers per target; the ORT TensorRT-EP variant passes its own list.
PROVIDERS_BY_TARGET: dict[str, list[Any]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def default_threads() -> int:
    """Intra-op threads for every candidate: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OrtRunner:
    """An ONNX Runtime session behind the server's Runtime protocol (infer / close)."""

    def __init__(self, model_path: Path, providers: Sequence[Any], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), options, providers=list(providers))
        self.providers: list[str] = list(self._session.get_providers())

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run one batch."""
        values = self._session.run(list(output_names), dict(inputs))
        return {name: np.asarray(value) for name, value in zip(output_names, values, strict=True)}

    def close(self) -> None:
        """Drop the session."""
        del self._session


def slice_inputs(
    inputs: Mapping[str, np.ndarray], start: int, stop: int, batching: bool
) -> dict[str, np.ndarray]:
    """Samples [start, stop) as one batch (a non-batching model gets one sample, unstacked)."""
    if batching:
        return {name: np.ascontiguousarray(array[start:stop]) for name, array in inputs.items()}
    return {name: np.ascontiguousarray(array[start]) for name, array in inputs.items()}


def run_dataset(
    runtime: Runtime,
    inputs: Mapping[str, np.ndarray],
    count: int,
    output_names: Sequence[str],
    max_batch_size: int,
) -> dict[str, np.ndarray]:
    """Outputs over the whole dataset, in batches of max_batch_size (one by one if 0)."""
    batching = max_batch_size > 0
    step = max_batch_size if batching else 1
    parts: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for start in range(0, count, step):
        batch = slice_inputs(inputs, start, min(start + step, count), batching)
        outputs = runtime.infer(batch, output_names)
        for name in output_names:
            value = outputs[name] if batching else outputs[name][np.newaxis]
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def repeat_to(
    inputs: Mapping[str, np.ndarray], count: int, batch: int, batching: bool
) -> dict[str, np.ndarray]:
    """A benchmark batch of `batch` samples cut (and tiled when short) from real data."""
    if not batching:
        return slice_inputs(inputs, 0, 1, batching=False)
    reps = -(-batch // max(count, 1))
    return {
        name: np.ascontiguousarray(np.concatenate([array] * reps)[:batch])
        for name, array in inputs.items()
    }
