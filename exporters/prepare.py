"""The load stage of an export: the model, its bound inputs and outputs, the sizes and values
parity runs at, and the module the exporter traces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exporters.binding import (
    ForwardSignature,
    ModelCall,
    check_forward_kwargs,
    export_module,
    forward_signature,
)
from exporters.errors import ExportError
from exporters.inputs import InputBatches, SizePlan, ValueRange, plan_sizes, to_torch
from exporters.options import ExportOptions
from exporters.outputs import OutputSelection
from exporters.resolve import EXPORT_EXAMPLE_BATCH, resolve_inputs, resolve_outputs
from exporters.sources import LoadedModel, load_source
from exporters.specs import IOSpec, example_dim_sizes, parse_dim_sizes
from exporters.value_ranges import probe_arrays, probe_value_ranges


@dataclass
class PreparedModel:
    """Everything the export, parity and report stages need from the load stage."""

    loaded: LoadedModel
    signature: ForwardSignature | None
    call: ModelCall
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    selection: OutputSelection
    plan: SizePlan
    ranges: dict[str, ValueRange]
    batches: InputBatches
    model: Any  # the nn.Module the exporter traces
    args: tuple[Any, ...]  # its example inputs
    notes: list[str] = field(default_factory=list)

    def reference(self, *tensors: Any) -> tuple[Any, ...]:
        """PyTorch's selected outputs for positional input tensors (parity's reference)."""
        return self.selection.pick(self.call(*tensors))

    def binding(self) -> dict[str, Any]:
        """The report's record of how inputs reach forward and where outputs come from."""
        return self.call.binding(self.signature) | {"outputs": self.selection.to_json()}


def prepare(options: ExportOptions, example: Mapping[str, np.ndarray] | None) -> PreparedModel:
    """Load SOURCE, bind its inputs, plan sizes, draw values, select outputs."""
    loaded = load_source(
        options.source, options.weights, options.trust_pickled_module, options.init_args
    )
    inputs = resolve_inputs(options.inputs, options.dynamic_dims, loaded, example)
    signature = forward_signature(loaded)
    check_forward_kwargs(options.forward_kwargs, signature, inputs)
    plan = plan_sizes(
        inputs,
        dict(parse_dim_sizes(text) for text in options.dim_sizes),
        example_dim_sizes(example, inputs) if example is not None else None,
    )
    call = ModelCall(
        loaded.module,
        tuple(s.name for s in inputs),
        signature is not None and signature.by_keyword,
        dict(options.forward_kwargs),
    )
    ranges = (
        {}
        if example is not None
        else probe_value_ranges(
            call, loaded.module, inputs, probe_arrays(inputs, EXPORT_EXAMPLE_BATCH, plan.export)
        )
    )
    batches = InputBatches(inputs, example, options.seed, ranges)
    selection, outputs = resolve_outputs(
        options.outputs, call, batches, plan, _generated(inputs, ranges, plan, example)
    )
    notes = list(selection.notes)
    notes += [
        f"integer input '{name}' feeds no embedding ferry can see: parity draws it "
        f"from {r.low}..{r.high - 1}; pass --example FILE.npz with real values"
        for name, r in ranges.items()
        if r.narrow
    ]
    if loaded.exported_program is not None and not selection.complete:
        raise ExportError(
            "an ExportedProgram (.pt2) is exported whole: its outputs cannot be selected "
            "with --output, nor can values that are not tensors be left out",
            stage="load",
        )
    return PreparedModel(
        loaded,
        signature,
        call,
        inputs,
        outputs,
        selection,
        plan,
        ranges,
        batches,
        export_module(call, selection),
        to_torch(batches.batch(EXPORT_EXAMPLE_BATCH, plan.export), inputs),
        notes,
    )


def _generated(
    inputs: list[IOSpec],
    ranges: Mapping[str, ValueRange],
    plan: SizePlan,
    example: Mapping[str, np.ndarray] | None,
) -> tuple[str, str]:
    """What the model was fed, and what to pass instead, for the error when it fails on it."""
    sizes = ", ".join(f"{k}={v}" for k, v in plan.export.items())
    at = f" at {sizes}" if sizes else ""
    resize = f"; other sizes with --dim-sizes (now {sizes})" if sizes else ""
    if example is not None:
        return f"rows of --example{at}", f"check --input and --example{resize}"
    drawn = [
        f"{s.name} {r.low}..{r.high - 1}" if (r := ranges.get(s.name)) else f"{s.name} random"
        for s in inputs
    ]
    hint = (
        "check --input; if the values are what it refuses, pass --example FILE.npz with "
        f"real rows of {', '.join(s.name for s in inputs)}{resize}"
    )
    return f"values {', '.join(drawn)}{at}", hint
