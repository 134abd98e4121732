"""Runtimes execute one already-batched forward pass; chosen by a table keyed by platform.

A runtime module is imported only when a model of its platform loads, so the serving core never
imports onnxruntime or tensorrt at module level and the TensorRT runtime costs nothing on CPU.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from server.errors import ErrorKind, ServingError
from server.repository_format import ModelConfig


class Runtime(Protocol):
    """One model instance. Construct = load; `infer` is synchronous and runs on a worker thread."""

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Run the model on batched inputs and return the named outputs."""

    def close(self) -> None:
        """Release the instance's resources."""


class RuntimeFactory(Protocol):
    """Builds one instance of a model version: `factory(config, version_path, instance_index)`."""

    def __call__(self, config: ModelConfig, version_path: Path, instance_index: int) -> Runtime:
        """Load the model file found in `version_path` according to `config`."""


# platform (config.platform or config.backend) -> "module:factory".
RUNTIME_BY_PLATFORM: dict[str, str] = {
    "onnxruntime_onnx": "server.runtimes.onnxruntime:OnnxRuntime",
    "onnxruntime": "server.runtimes.onnxruntime:OnnxRuntime",
    "tensorrt_plan": "server.runtimes.tensorrt:TensorRTRuntime",
    "tensorrt": "server.runtimes.tensorrt:TensorRTRuntime",
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
    module_name, attribute = target.split(":")
    factory: RuntimeFactory = getattr(importlib.import_module(module_name), attribute)
    return factory
