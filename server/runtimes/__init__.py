"""Runtimes execute one already-batched forward pass; chosen by a table keyed by platform.

A runtime module is imported only when a model of its platform loads, so the serving core never
imports onnxruntime or tensorrt at module level and the TensorRT runtime costs nothing on CPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from server.errors import ErrorKind, ServingError
from server.services import InferenceServices
from server.types import InferenceRequest

if TYPE_CHECKING:  # keeps this module light: Python model processes import the package
    from server.repository_format import ModelConfig


class Runtime(Protocol):
    """One model instance. Construct = load; `infer` is synchronous and runs on a worker thread.

    A runtime may set `inline_capable = False` (the default is True) to keep the batcher from
    running its very fast executions on the event loop, e.g. when `infer` blocks on I/O.
    """

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the model on batched inputs and return the named outputs."""

    def close(self) -> None:
        """Release the instance's resources."""


class RequestRuntime(Protocol):
    """One model instance that takes the batch as a list of requests (a Python model): no
    concatenation; each request gets its own outcome. The batcher awaits `execute` on the event
    loop, one batch per instance at a time.

    An outcome is the request's outputs (name -> array), a ServingError failing only that
    request, or a ResponseStream (decoupled models: the responses arrive after `execute`).
    """

    executes_requests: bool  # True: the batcher's marker for this kind

    async def execute(self, requests: Sequence[InferenceRequest]) -> list[Any]:
        """Run one batch; one outcome per request, in order."""

    def close(self) -> None:
        """Release the instance (blocking; from a worker thread)."""

    async def aclose(self) -> None:
        """Release the instance from the event loop (finalize, then stop)."""


class SharedExecutionOutcomes(list[Any]):
    """A RequestRuntime's outcomes of a batch that its instance ran in one execution together
    with other workers' batches (SharedInstances): `rows` and `requests` of that whole
    execution, and whether this batch `reports` it. Exactly one batch of an execution reports
    it, so the executions the workers count add up to the model's."""

    def __init__(self, outcomes: list[Any], rows: int, requests: int, reports: bool) -> None:
        super().__init__(outcomes)
        self.rows, self.requests, self.reports = rows, requests, reports


@dataclass(frozen=True)
class SharedInstances:
    """Under `ferry serve --workers N` with shared batching, a Python model's instance
    processes run in its owner worker and take batches from every worker's batcher, running
    the batches that wait for them together in one `execute` (server/runtimes/python/stub.py).
    `folder`: where their sockets are (the supervisor's private folder); `key`: names the
    version (model, version, digest of its files and config); `attach`: this worker connects
    to the owner's processes instead of starting them."""

    folder: Path
    key: str
    attach: bool

    def socket_path(self, instance_index: int) -> Path:
        """Where instance `instance_index`'s process takes other workers' connections."""
        digest = hashlib.blake2s(self.key.encode(), digest_size=8).hexdigest()
        return self.folder / f"py-{digest}-{instance_index}.sock"


@dataclass(frozen=True)
class RuntimeContext:
    """What an instance may need beyond its config and files: the event loop it is served on,
    the server's inference entry (models that call models), the CPU threads a runtime's
    pool may take when the config names none (0: the runtime's own default, every core), and
    whether its processes are shared across workers."""

    loop: asyncio.AbstractEventLoop | None = None
    services: InferenceServices | None = None
    cpu_threads: int = 0
    shared_instances: SharedInstances | None = None


class RuntimeFactory(Protocol):
    """Builds one instance of a model version:
    `factory(config, version_path, instance_index, context)`."""

    def __call__(
        self,
        config: ModelConfig,
        version_path: Path,
        instance_index: int,
        context: RuntimeContext | None = None,
    ) -> Runtime | RequestRuntime:
        """Load the model file found in `version_path` according to `config`."""


# platform (config.platform or config.backend) -> "module:factory".
RUNTIME_BY_PLATFORM: dict[str, str] = {
    "onnxruntime_onnx": "server.runtimes.onnxruntime:OnnxRuntime",
    "onnxruntime": "server.runtimes.onnxruntime:OnnxRuntime",
    "tensorrt_plan": "server.runtimes.tensorrt:TensorRTRuntime",
    "tensorrt": "server.runtimes.tensorrt:TensorRTRuntime",
    "triton_gateway": "server.runtimes.triton_gateway:TritonGatewayRuntime",
    "python": "server.runtimes.python.runtime:PythonRuntime",
}

# platform -> "module:function(config, name) -> config" run at load, before validation, for
# platforms whose config is completed from somewhere other than a model file (ONNX's is in
# server.repository_format).
CONFIG_COMPLETER_BY_PLATFORM: dict[str, str] = {
    "triton_gateway": "server.runtimes.triton_gateway:complete_config",
    "python": "server.runtimes.python.config:complete_config",
}


def runtime_factory(config: ModelConfig) -> RuntimeFactory:
    """The factory for a config's platform; UNSUPPORTED for a platform ferry cannot run."""
    platform = config.platform or config.backend
    target = RUNTIME_BY_PLATFORM.get(platform)
    if target is None:
        raise ServingError(
            ErrorKind.UNSUPPORTED,
            f"platform '{platform}' is not supported; ferry runs: "
            f"{', '.join(sorted(RUNTIME_BY_PLATFORM))}",
        )
    factory: RuntimeFactory = _resolve(target)
    return factory


def complete_config(config: ModelConfig, name: str, version_path: Path) -> ModelConfig:
    """Run the platform's config completer (if it has one) on a config about to be loaded;
    `version_path` is the newest version's folder (a completer may read the model's files)."""
    target = CONFIG_COMPLETER_BY_PLATFORM.get(config.platform or config.backend)
    if target is None:
        return config
    completed: ModelConfig = _resolve(target)(config, name, version_path)
    return completed


def _resolve(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
