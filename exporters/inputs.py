"""Batches of model inputs for export and parity: rows of `--example` or valid random values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporters.errors import ExportError
from exporters.specs import IOSpec

# Integer inputs that feed no embedding ferry can see are drawn from [0, NARROW_INT_HIGH): safe
# for small vocabularies and class ids, and said so (pass --example for real values).
NARROW_INT_HIGH = 10
# Variable dims without --dim-sizes or --example: exported at the first size, checked at both.
# Each further dim name adds 1 to both, so that two independent dims never share a size.
DEFAULT_DIM_SIZES = (16, 9)


@dataclass(frozen=True)
class ValueRange:
    """How the random values of one integer input are drawn: [low, high), and why."""

    low: int
    high: int
    origin: str  # "embedding <module> (num_embeddings N)", "attention mask", "narrow default"
    mask: bool = False

    @property
    def narrow(self) -> bool:
        """True when ferry did not find the range the model accepts."""
        return self.origin == NARROW_ORIGIN

    def to_json(self) -> dict[str, Any]:
        """The report's record of this range."""
        return {"low": self.low, "high": self.high, "origin": self.origin}


NARROW_ORIGIN = "no embedding reads it: narrow default"
MASK_RANGE = ValueRange(0, 2, "attention mask: ones, random padding at the end", mask=True)


def is_mask_name(name: str) -> bool:
    """Inputs named like an attention/padding mask get ones with padding at the end."""
    return name == "mask" or name.endswith("_mask")


@dataclass(frozen=True)
class SizePlan:
    """Sizes of every variable dim: `sets[0]` exports; parity runs at every set."""

    sets: tuple[dict[str, int], ...]

    @property
    def export(self) -> dict[str, int]:
        """The sizes of the export example."""
        return self.sets[0]

    def to_json(self) -> dict[str, list[int]]:
        """Dim name -> the sizes parity checked."""
        names = self.sets[0].keys()
        return {name: sorted({s[name] for s in self.sets}) for name in names}


def variable_dim_names(specs: Sequence[IOSpec]) -> list[str]:
    """Every variable dim name, in order of first use."""
    names: list[str] = []
    for spec in specs:
        names += [n for n in spec.variable_axes.values() if n not in names]
    return names


def plan_sizes(
    specs: Sequence[IOSpec],
    requested: Mapping[str, tuple[int, ...]],
    example_sizes: Mapping[str, int] | None,
) -> SizePlan:
    """Sizes to export and check each variable dim at: --dim-sizes, the example's, defaults."""
    names = variable_dim_names(specs)
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise ExportError(
            f"--dim-sizes {unknown[0]}: no variable dim has that name (variable dims: "
            f"{', '.join(names) or 'none'})",
            stage="load",
        )
    per_name: dict[str, tuple[int, ...]] = {}
    for index, name in enumerate(names):
        if example_sizes is not None:
            full = example_sizes[name]
            larger = [s for s in requested.get(name, ()) if s > full]
            if larger:
                raise ExportError(
                    f"--dim-sizes {name}={larger[0]}: larger than the --example's {full} "
                    "(parity crops the example rows to the other sizes)",
                    stage="load",
                )
            others = [s for s in requested.get(name, ()) if s != full]
            if name not in requested and (full + 1) // 2 != full:
                others = [(full + 1) // 2]
            per_name[name] = (full, *others)
        else:
            per_name[name] = requested.get(name) or tuple(s + index for s in DEFAULT_DIM_SIZES)
    count = max((len(sizes) for sizes in per_name.values()), default=1)
    sets = tuple(
        {name: sizes[min(i, len(sizes) - 1)] for name, sizes in per_name.items()}
        for i in range(count)
    )
    return SizePlan(sets)


class InputBatches:
    """Batches of every input: rows of `--example` (cycled, cropped) or seeded random values."""

    def __init__(
        self,
        specs: Sequence[IOSpec],
        example: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        ranges: Mapping[str, ValueRange] | None = None,
    ) -> None:
        self.specs = list(specs)
        self.example = example
        self.seed = seed
        self.ranges = dict(ranges or {})

    def batch(self, rows: int, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        """A batch of `rows` rows for every input, deterministic for given rows and sizes."""
        key = [self.seed, rows, *(sizes[n] for n in sorted(sizes))]
        rng = np.random.default_rng(key)
        return {spec.name: self._array(spec, rows, sizes, rng) for spec in self.specs}

    def _array(
        self, spec: IOSpec, rows: int, sizes: Mapping[str, int], rng: np.random.Generator
    ) -> np.ndarray:
        shape = spec.shape(rows, sizes)
        if self.example is not None:
            array = self.example[spec.name]
            array = np.take(array, np.arange(rows) % len(array), axis=0)
            for axis in spec.variable_axes:
                array = np.take(array, np.arange(shape[axis]), axis=axis)
            return np.ascontiguousarray(array)
        kind = spec.numpy_dtype.kind
        value_range = self.ranges.get(spec.name)
        if value_range is not None and value_range.mask:
            return padding_mask(shape, rng).astype(spec.numpy_dtype)
        if kind == "f":
            return rng.standard_normal(shape).astype(spec.numpy_dtype)
        if kind == "b":
            return rng.integers(0, 2, shape).astype(np.bool_)
        low, high = (value_range.low, value_range.high) if value_range else (0, NARROW_INT_HIGH)
        return rng.integers(low, high, shape).astype(spec.numpy_dtype)


def padding_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Ones, with a random run of zeros at the end of each row's last axis (row 0 unpadded)."""
    mask = np.ones(shape, dtype=np.int64)
    if len(shape) < 2 or shape[-1] < 2:
        return mask
    length = shape[-1]
    flat = mask.reshape(-1, length)
    padding = rng.integers(0, length // 2 + 1, len(flat))
    padding[0] = 0
    for row, count in zip(flat, padding, strict=True):
        if count:
            row[length - count :] = 0
    return mask


def to_torch(arrays: Mapping[str, np.ndarray], specs: Sequence[IOSpec]) -> tuple[Any, ...]:
    """Positional torch tensors in spec order."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in specs)
