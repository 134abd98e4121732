"""What `ferry export` takes, as one frozen value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExportOptions:
    """Everything `ferry export` takes."""

    source: str
    name: str
    repository: Path
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    dynamic_dims: tuple[str, ...] = ()
    dim_sizes: tuple[str, ...] = ()
    init_args: Mapping[str, Any] = field(default_factory=dict)
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)
    example: Path | None = None
    weights: Path | None = None
    max_batch_size: int = 64
    opset: int = 20
    version: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    reference_data: Path | None = None
    overwrite: bool = False
    trust_pickled_module: bool = False
    seed: int = 0
