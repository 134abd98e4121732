"""A loaded model version: its config, wire specs, instances behind a batcher, and statistics."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from monitoring.observer import BatchRecord
from server.batching import BatchResult
from server.model_validation import check_before_load
from server.observers import ObserverFanout
from server.repository_format import KIND_CPU, ModelConfig, tensor_specs
from server.response_cache import uses_response_cache
from server.runtimes import RequestRuntime, Runtime, RuntimeContext, runtime_factory
from server.schedulers import SCHEDULER_BY_CHOICE, WITHOUT_INSTANCES, Scheduler, scheduling_choice
from server.services import InferenceServices
from server.statistics import ModelStatistics
from server.types import TensorSpec

logger = logging.getLogger(__name__)

ONNX_CPU_DEFAULT_INSTANCES = 2  # Triton's onnxruntime backend default for KIND_CPU without count


def instance_count(config: ModelConfig) -> int:
    """Instances to create: the sum over instance groups (1 when the config names none)."""
    if not config.instance_group:
        return 1
    total = 0
    for group in config.instance_group:
        if group.count > 0:
            total += int(group.count) * max(1, len(group.gpus))
        else:
            total += ONNX_CPU_DEFAULT_INSTANCES if group.kind == KIND_CPU else 1
    return max(total, 1)


def create_instances(
    config: ModelConfig, version_path: Path, context: RuntimeContext | None = None
) -> list[Runtime | RequestRuntime]:
    """Check the config against the model file, then load every instance of a version
    (blocking: run it off the event loop); none for a scheduler that has no instances of its
    own (ensembles)."""
    if scheduling_choice(config) in WITHOUT_INSTANCES:
        return []
    factory = runtime_factory(config)
    check_before_load(config, version_path)
    instances: list[Runtime | RequestRuntime] = []
    try:
        for index in range(instance_count(config)):
            instances.append(factory(config, version_path, index, context))
    except BaseException:
        for runtime in instances:
            runtime.close()
        raise
    return instances


def read_labels(model_dir: Path, config: ModelConfig) -> dict[str, list[str]]:
    """Class labels per output from `label_filename` (classification extension)."""
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if output.label_filename:
            path = model_dir / output.label_filename
            if path.is_file():
                labels[output.name] = path.read_text().splitlines()
    return labels


@dataclass
class ModelVersion:
    """One READY version: what the data plane needs to validate and run a request."""

    name: str
    version: str
    config: ModelConfig
    version_path: Path
    scheduler: Scheduler
    statistics: ModelStatistics
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    labels: dict[str, list[str]] = field(default_factory=dict)
    load_duration_s: float = 0.0
    signature: tuple[object, ...] = ()
    # --shared-batching: another worker loads and runs it (server/workers/remote_model.py)
    runs_elsewhere: bool = False

    # cached: read on every request, and a loaded version's config does not change
    @functools.cached_property
    def max_batch_size(self) -> int:
        return int(self.config.max_batch_size)

    @functools.cached_property
    def platform(self) -> str:
        return str(self.config.platform or self.config.backend)

    @functools.cached_property
    def uses_response_cache(self) -> bool:
        """Requests go through the response cache (when the server has one)."""
        return uses_response_cache(self.config)

    @functools.cached_property
    def runs_steps(self) -> bool:
        """Its scheduler calls other models through the data plane (an ensemble)."""
        return scheduling_choice(self.config) in WITHOUT_INSTANCES

    @functools.cached_property
    def runs_sequences(self) -> bool:
        """Its requests are steps of sequences (sequence_batching), here or in its owner."""
        return scheduling_choice(self.config) == "sequence_batching"

    @functools.cached_property
    def decoupled(self) -> bool:
        """Responses stream (model_transaction_policy { decoupled: true })."""
        return bool(self.config.model_transaction_policy.decoupled)

    @property
    def utf8_strings(self) -> bool:
        """ONNX Runtime's Python binding only takes string tensors that are valid UTF-8."""
        return self.platform.startswith("onnxruntime")


def start_version(
    name: str,
    version: int,
    config: ModelConfig,
    version_path: Path,
    instances: list[Runtime | RequestRuntime],
    fanout: ObserverFanout,
    load_started: float,
    signature: tuple[object, ...] = (),
    services: InferenceServices | None = None,
) -> ModelVersion:
    """Put loaded instances behind the config's scheduler (on the event loop) and return the
    READY version."""
    output_names = [spec.name for spec in tensor_specs(config)[1]]
    statistics = ModelStatistics(name, str(version))
    version_str = str(version)

    def on_batch(result: BatchResult) -> None:
        if result.success:
            statistics.record_execution(
                result.batch_size,
                result.compute_input_s,
                result.compute_infer_s,
                result.compute_output_s,
            )
        if fanout:
            fanout.notify(
                BatchRecord(
                    name,
                    version_str,
                    result.batch_size,
                    result.request_count,
                    result.compute_input_s,
                    result.compute_infer_s,
                    result.compute_output_s,
                )
            )

    build = SCHEDULER_BY_CHOICE[scheduling_choice(config)]
    scheduler = build(
        config,
        instances,
        output_names,
        on_batch,
        services,
        model_dir=version_path.parent,
    )
    return _version(
        name, version, config, version_path, scheduler, statistics, load_started, signature
    )


def remote_version(
    name: str,
    version: int,
    config: ModelConfig,
    version_path: Path,
    scheduler: Scheduler,
    load_started: float,
    signature: tuple[object, ...] = (),
) -> ModelVersion:
    """A READY version that another worker runs (server/workers/remote_model.py): built from its
    config alone, its requests go to `scheduler`."""
    statistics = ModelStatistics(name, str(version))
    return _version(
        name, version, config, version_path, scheduler, statistics, load_started, signature, True
    )


def _version(
    name: str,
    version: int,
    config: ModelConfig,
    version_path: Path,
    scheduler: Scheduler,
    statistics: ModelStatistics,
    load_started: float,
    signature: tuple[object, ...],
    runs_elsewhere: bool = False,
) -> ModelVersion:
    input_specs, output_specs = tensor_specs(config)
    return ModelVersion(
        name=name,
        version=str(version),
        config=config,
        version_path=version_path,
        scheduler=scheduler,
        statistics=statistics,
        inputs={spec.name: spec for spec in input_specs},
        outputs={spec.name: spec for spec in output_specs},
        labels=read_labels(version_path.parent, config),
        load_duration_s=time.perf_counter() - load_started,
        signature=signature,
        runs_elsewhere=runs_elsewhere,
    )
