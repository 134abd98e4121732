"""Runtimes execute one already-batched forward pass; chosen by a table keyed by platform.

A runtime module is imported only when a model of its platform loads, so the serving core never
imports onnxruntime or tensorrt at module level and the TensorRT runtime costs nothing on CPU.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.errors import ErrorKind, ServingError
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
    "triton_gateway": "server.runtimes.triton_gateway:TritonGatewayRuntime",
}

# platform -> "module:function(config, name) -> config" run at load, before validation, for
# platforms whose config is completed from somewhere other than a model file (ONNX's is in
# server.repository_format).
CONFIG_COMPLETER_BY_PLATFORM: dict[str, str] = {
    "triton_gateway": "server.runtimes.triton_gateway:complete_config",
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


def complete_config(config: ModelConfig, name: str) -> ModelConfig:
    """Run the platform's config completer (if it has one) on a config about to be loaded."""
    target = CONFIG_COMPLETER_BY_PLATFORM.get(config.platform or config.backend)
    if target is None:
        return config
    completed: ModelConfig = _resolve(target)(config, name)
    return completed


def _resolve(target: str) -> Any:
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
