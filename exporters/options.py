"""What `ferry export` takes, as one frozen value."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporters.prepare import PreparedModel
    from server.repository_format import ModelConfig

# A further check of the exported file (after the parity gate): raises ExportError to refuse
# it, or returns a section for export_report.json. A stateful export checks whole sequences.
ExtraVerify = Callable[["PreparedModel", Path], dict[str, Any]]


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
    # hooks of variants of the export (exporters/stateful.py): a check of the exported file and
    # a final edit of config.pbtxt
    extra_verify: ExtraVerify | None = None
    edit_config: Callable[[ModelConfig], None] | None = None
