"""Triton's `reshape` on a config tensor: the model sees `reshape.shape`, clients see `dims`.

    input [{ name: "x" data_type: TYPE_FP32 dims: [1] reshape: { shape: [] } }]

is the usual way to serve a model whose per-row input is a scalar (graph shape [batch]) while
requests send [batch, 1]. Runtimes reshape inputs before the model and outputs after it; the
batch dim, when the model batches, is kept in front.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from server.errors import invalid
from server.repository_format import ModelConfig


class Reshapes:
    """The reshapes of one model: inputs to the model's shape, outputs to the config's dims."""

    def __init__(self, config: ModelConfig) -> None:
        self.batching = config.max_batch_size > 0
        self.inputs = {
            t.name: tuple(int(d) for d in t.reshape.shape)
            for t in config.input
            if t.HasField("reshape")
        }
        self.outputs = {
            t.name: tuple(int(d) for d in t.dims) for t in config.output if t.HasField("reshape")
        }

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs)

    def to_model(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs as the model takes them."""
        return {name: self._apply(name, array, self.inputs) for name, array in inputs.items()}

    def to_config(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs as the config declares them."""
        return {name: self._apply(name, array, self.outputs) for name, array in outputs.items()}

    def _apply(
        self, name: str, array: np.ndarray, shapes: Mapping[str, tuple[int, ...]]
    ) -> np.ndarray:
        shape = shapes.get(name)
        if shape is None:
            return array
        full = (array.shape[0], *shape) if self.batching else shape
        try:
            return array.reshape(full)
        except ValueError:
            raise invalid(
                f"tensor '{name}' of shape {list(array.shape)} cannot be reshaped to "
                f"{list(full)} (the config's reshape)"
            ) from None
