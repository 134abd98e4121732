"""Model warmup (Triton's `model_warmup`): each sample runs `count` times on every instance of
a version before the version is READY; a sample that fails makes the version UNAVAILABLE with
the reason, and its instances are released.

    model_warmup [{ name: "s" batch_size: 8 count: 2
                    inputs { key: "x" value { data_type: TYPE_FP32 dims: [16]
                                              zero_data: true | random_data: true |
                                              input_data_file: "x.bin" } } }]

As in Triton: a sample is `batch_size` requests of one row each (executed as one batch), a
batch_size of 0 skips the sample, `count` 0 runs it once, random BYTES are zero data (empty
strings), files are read from REPO/NAME/warmup/ (raw row-major bytes; BYTES elements as a
4-byte little-endian length and the bytes), and the executions count in the model's statistics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.observer import BatchRecord, RequestRecord
from server.errors import ErrorKind, ServingError, invalid
from server.model import ModelVersion, create_instances
from server.observers import ObserverFanout
from server.repository_format import DATATYPE_BY_CONFIG_TYPE, ModelConfig, tensor_specs
from server.runtimes import RequestRuntime, Runtime, RuntimeContext
from server.streams import ResponseStream
from server.types import NUMPY_DTYPE_BY_DATATYPE, InferenceRequest

WARMUP_FOLDER = "warmup"
WARMUP_PROTOCOL = "warmup"  # the protocol label of warmup requests in metrics


@dataclass(frozen=True)
class WarmupSample:
    """One `model_warmup` entry, its data generated: `inputs` is one request's tensors."""

    name: str
    inputs: dict[str, np.ndarray]
    batch_size: int
    count: int


@dataclass(frozen=True)
class WarmupExecution:
    """One execution of a sample (it counts in the version's statistics)."""

    requests: int
    rows: int
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float


def warmup_samples(config: ModelConfig, model_dir: Path) -> list[WarmupSample]:
    """The config's samples with their data (INVALID_ARG / INTERNAL for a bad sample)."""
    batching = config.max_batch_size > 0
    samples = []
    for setting in config.model_warmup:
        if setting.batch_size == 0:
            continue
        inputs = {
            name: _sample_input(name, spec, model_dir, batching)
            for name, spec in setting.inputs.items()
        }
        samples.append(
            WarmupSample(setting.name, inputs, int(setting.batch_size), max(1, setting.count))
        )
    return samples


def _sample_input(name: str, spec: Any, model_dir: Path, batching: bool) -> np.ndarray:
    datatype = DATATYPE_BY_CONFIG_TYPE.get(spec.data_type)
    if datatype is None or datatype not in NUMPY_DTYPE_BY_DATATYPE:
        raise invalid(f"warmup setting of input '{name}': data type {spec.data_type} is not served")
    dims = [int(d) for d in spec.dims]
    if any(d < 0 for d in dims):
        raise invalid(
            f"warmup setting expects all variable-size dimensions are specified for input '{name}'"
        )
    shape = ([1] if batching else []) + dims
    elements = math.prod(shape)
    dtype = NUMPY_DTYPE_BY_DATATYPE[datatype]
    kind = spec.WhichOneof("input_data_type")
    if kind == "zero_data" or (kind == "random_data" and datatype == "BYTES"):
        if datatype == "BYTES":
            return np.full(shape, b"", dtype=np.object_)
        return np.zeros(shape, dtype=dtype)
    if kind == "random_data":  # random bytes, as Triton
        raw = np.random.default_rng().integers(0, 256, elements * dtype.itemsize, dtype=np.uint8)
        return raw.view(dtype).reshape(shape)
    if kind == "input_data_file":
        path = model_dir / WARMUP_FOLDER / spec.input_data_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ServingError(
                ErrorKind.INTERNAL,
                f"failed to open text file for read {path}: {exc.strerror or exc}",
            ) from None
        if datatype == "BYTES":
            return _bytes_elements(name, data, elements).reshape(shape)
        needed = elements * dtype.itemsize
        if len(data) < needed:
            raise invalid(
                f"warmup setting expects {needed} bytes, but the data provided from "
                f"{spec.input_data_file} only has {len(data)} bytes"
            )
        return np.frombuffer(data[:needed], dtype=dtype).reshape(shape).copy()
    raise invalid(f"warmup setting expects input '{name}' to have input_data_type set")


def _bytes_elements(name: str, data: bytes, elements: int) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while len(items) < elements:
        if offset + 4 > len(data):
            raise invalid(
                f"warmup data of input '{name}' holds {len(items)} strings, {elements} needed"
            )
        length = int.from_bytes(data[offset : offset + 4], "little")
        items.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return np.array(items, dtype=np.object_)


async def warm_up(
    model: str,
    version: str,
    instances: Sequence[Any],
    samples: Sequence[WarmupSample],
    output_names: Sequence[str],
    batching: bool,
) -> list[WarmupExecution]:
    """Run every sample on every instance; ServingError(INVALID_ARG) naming the first sample
    that failed (Triton's 'failed to run warmup sample ...')."""
    executions = []
    for instance in instances:
        for sample in samples:
            for _ in range(sample.count):
                try:
                    executions += await _run_sample(
                        model, version, instance, sample, output_names, batching
                    )
                except Exception as exc:
                    message = exc.message if isinstance(exc, ServingError) else str(exc)
                    raise invalid(
                        f"failed to run warmup sample '{sample.name}': {message}; "
                    ) from exc
    return executions


async def _run_sample(
    model: str,
    version: str,
    instance: Any,
    sample: WarmupSample,
    output_names: Sequence[str],
    batching: bool,
) -> list[WarmupExecution]:
    if getattr(instance, "executes_requests", False):  # takes the batch as requests
        started = time.perf_counter()
        requests = [
            InferenceRequest(model, version, sample.inputs, protocol=WARMUP_PROTOCOL)
            for _ in range(sample.batch_size)
        ]
        errors = await _request_errors(await instance.execute(requests))
        if errors:  # as Triton: every failed response of the sample, each followed by "; "
            raise ServingError(ErrorKind.INTERNAL, "; ".join(errors))
        rows = sample.batch_size if batching else 1
        return [WarmupExecution(sample.batch_size, rows, 0.0, time.perf_counter() - started, 0.0)]
    if not batching:  # one request per execution
        return [
            await _infer(instance, sample.inputs, output_names, 1, 1)
            for _ in range(sample.batch_size)
        ]
    started = time.perf_counter()
    inputs = {
        name: np.concatenate([array] * sample.batch_size) for name, array in sample.inputs.items()
    }
    prepared = time.perf_counter() - started
    execution = await _infer(instance, inputs, output_names, sample.batch_size, sample.batch_size)
    return [
        WarmupExecution(
            execution.requests,
            execution.rows,
            prepared,
            execution.compute_infer_s,
            execution.compute_output_s,
        )
    ]


async def _request_errors(outcomes: Sequence[Any]) -> list[str]:
    """The error messages of a batch's outcomes; a decoupled model's streams are read to their
    final response (Triton waits for it)."""
    errors = []
    for outcome in outcomes:
        if isinstance(outcome, ResponseStream):
            errors += [item.error.message async for item in outcome if item.error is not None]
        elif isinstance(outcome, ServingError):
            errors.append(outcome.message)
        elif isinstance(outcome, BaseException):
            errors.append(str(outcome))
    return errors


async def _infer(
    instance: Any,
    inputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
    requests: int,
    rows: int,
) -> WarmupExecution:
    started = time.perf_counter()
    await asyncio.to_thread(instance.infer, inputs, list(output_names))
    return WarmupExecution(requests, rows, 0.0, time.perf_counter() - started, 0.0)


def record_warmup(
    version: ModelVersion, executions: Sequence[WarmupExecution], fanout: ObserverFanout
) -> None:
    """Count the warmup executions in the version's statistics and metrics, as Triton does."""
    statistics = version.statistics
    for execution in executions:
        compute_s = execution.compute_input_s + execution.compute_infer_s
        compute_s += execution.compute_output_s
        rows_per_request = max(1, execution.rows // execution.requests)
        statistics.record_execution(
            execution.rows,
            execution.compute_input_s,
            execution.compute_infer_s,
            execution.compute_output_s,
        )
        for _ in range(execution.requests):
            statistics.record_success(
                rows_per_request,
                compute_s,
                0.0,
                execution.compute_input_s,
                execution.compute_infer_s,
                execution.compute_output_s,
            )
        if fanout:
            fanout.notify(
                BatchRecord(
                    version.name,
                    version.version,
                    execution.rows,
                    execution.requests,
                    execution.compute_input_s,
                    execution.compute_infer_s,
                    execution.compute_output_s,
                )
            )
            for _ in range(execution.requests):
                fanout.notify(
                    RequestRecord(
                        version.name,
                        version.version,
                        WARMUP_PROTOCOL,
                        True,
                        rows_per_request,
                        compute_s,
                        0.0,
                        execution.compute_input_s,
                        execution.compute_infer_s,
                        execution.compute_output_s,
                    )
                )


async def load_warm_instances(
    name: str,
    number: int,
    config: ModelConfig,
    version_path: Path,
    context: RuntimeContext | None = None,
) -> tuple[list[Runtime | RequestRuntime], list[WarmupExecution]]:
    """Load a version's instances (off the event loop) and run its warmup on each; a failure
    releases the instances and raises."""
    instances = await asyncio.to_thread(create_instances, config, version_path, context)
    sharing = context.shared_instances if context is not None else None
    if sharing is not None and sharing.attach:  # the owner warmed the processes up
        return instances, []
    try:
        samples = warmup_samples(config, version_path.parent)
        if not samples:
            return instances, []
        _, outputs = tensor_specs(config)
        executions = await warm_up(
            name,
            str(number),
            instances,
            samples,
            [spec.name for spec in outputs],
            config.max_batch_size > 0,
        )
    except BaseException:
        await asyncio.to_thread(_close_all, instances)
        raise
    return instances, executions


def _close_all(instances: Sequence[Runtime | RequestRuntime]) -> None:
    for instance in instances:
        instance.close()
