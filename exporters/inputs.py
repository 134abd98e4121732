"""Batches of model inputs for export and parity, and the tensors a forward returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporters.errors import ExportError
from exporters.specs import IOSpec

# Random integer inputs are drawn from [0, RANDOM_INT_HIGH): safe for small vocabularies and
# class ids; pass --example for token ids or other constrained integers.
RANDOM_INT_HIGH = 10


class InputBatches:
    """Batches of every input: rows of `--example` (cycled) or seeded random values."""

    def __init__(
        self,
        specs: Sequence[IOSpec],
        example: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        self.specs = list(specs)
        self.example = example
        self.seed = seed

    def batch(self, size: int) -> dict[str, np.ndarray]:
        """A batch of `size` rows for every input, deterministic for a given size."""
        rng = np.random.default_rng([self.seed, size])
        return {spec.name: self._array(spec, size, rng) for spec in self.specs}

    def _array(self, spec: IOSpec, size: int, rng: np.random.Generator) -> np.ndarray:
        if self.example is not None:
            rows = self.example[spec.name]
            return np.ascontiguousarray(np.take(rows, np.arange(size) % len(rows), axis=0))
        shape = (size, *spec.dims)
        kind = spec.numpy_dtype.kind
        if kind == "f":
            return rng.standard_normal(shape).astype(spec.numpy_dtype)
        if kind == "b":
            return rng.integers(0, 2, shape).astype(np.bool_)
        return rng.integers(0, RANDOM_INT_HIGH, shape).astype(spec.numpy_dtype)


def to_torch(arrays: Mapping[str, np.ndarray], specs: Sequence[IOSpec]) -> tuple[Any, ...]:
    """Positional torch tensors in spec order."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in specs)


def flatten_outputs(result: Any) -> list[Any]:
    """Tensors of a forward result: a tensor, or nested tuples/lists/dicts of tensors."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in flatten_outputs(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in flatten_outputs(item)]
    raise ExportError(
        f"the model returned a {type(result).__name__}; ferry exports models that "
        "return tensors (or tuples/lists/dicts of tensors)",
        stage="load",
    )


def output_keys(result: Any) -> list[str] | None:
    """Default output names from a dict result (None for tensors and tuples)."""
    if isinstance(result, dict) and all(isinstance(k, str) for k in result):
        return list(result)
    return None
