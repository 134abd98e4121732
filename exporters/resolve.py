"""The model's input and output specs: from flags, example data, the signature and two runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporters.binding import ModelCall, bind_inputs, forward_signature
from exporters.errors import ExportError, summarize_exception
from exporters.inputs import InputBatches, SizePlan, to_torch
from exporters.outputs import OutputSelection, select_outputs
from exporters.sources import LoadedModel
from exporters.specs import (
    DATATYPE_BY_NUMPY_DTYPE,
    LABELS_KEY,
    IOSpec,
    check_data_matches,
    name_variable_dims,
    parse_dynamic_dim,
    parse_input_spec,
    spec_of_array,
)

EXPORT_EXAMPLE_BATCH = 2  # >= 2: an example batch of 1 freezes the batch dim


def specs_from_program(program: Any) -> list[IOSpec]:
    """Input specs read from an ExportedProgram's placeholders (batch dim left out)."""
    import torch

    user_inputs = set(program.graph_signature.user_inputs)
    specs: list[IOSpec] = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            raise ExportError(
                f"cannot read the shape of input '{node.name}' from the .pt2; pass --input",
                stage="load",
            )
        dtype = np.dtype(torch.empty((), dtype=value.dtype).numpy().dtype)
        # a symbolic non-batch dim is variable (named by name_variable_dims)
        dims = [size if isinstance(size, int) else -1 for size in value.shape[1:]]
        specs.append(IOSpec(node.name, DATATYPE_BY_NUMPY_DTYPE[dtype], tuple(dims)))
    return specs


def resolve_inputs(
    input_texts: Sequence[str],
    dynamic_dims: Sequence[str],
    loaded: LoadedModel,
    example: Mapping[str, np.ndarray] | None,
) -> list[IOSpec]:
    """Input specs from --input, else --example, else a .pt2's placeholders; variable dims
    named (--dynamic-dim, `dim_<axis>` for a bare -1); in forward's order."""
    if input_texts:
        specs = [parse_input_spec(text) for text in input_texts]
        if len({s.name for s in specs}) != len(specs):
            raise ExportError("--input names must be unique", stage="load")
    elif example is not None:
        specs = [spec_of_array(k, v) for k, v in example.items() if k != LABELS_KEY]
    elif loaded.exported_program is not None:
        specs = specs_from_program(loaded.exported_program)
    else:
        raise ExportError(
            "say what the model takes: --input NAME:DTYPE:DIMS (repeatable) or "
            "--example FILE.npz with one array per input",
            stage="load",
        )
    specs = name_variable_dims(specs, [parse_dynamic_dim(text) for text in dynamic_dims])
    if example is not None:
        check_data_matches(example, specs, "--example")
    return bind_inputs(specs, forward_signature(loaded))


def _output_dims(
    name: str, first: np.ndarray, second: np.ndarray | None, sizes: Sequence[Mapping[str, int]]
) -> tuple[int | str, ...]:
    """Dims of one output: those that change with the input sizes are variable, named after
    the input dim they follow when one does (else `<output>_<axis>`)."""
    dims: list[int | str] = []
    for axis in range(1, first.ndim):
        size = int(first.shape[axis])
        if second is None or int(second.shape[axis]) == size:
            dims.append(size)
            continue
        follows = [
            dim_name
            for dim_name in sizes[0]
            if sizes[0][dim_name] == size and sizes[1][dim_name] == int(second.shape[axis])
        ]
        dims.append(follows[0] if follows else f"{name}_{axis}")
    return tuple(dims)


def resolve_outputs(
    requested: Sequence[str],
    call: ModelCall,
    batches: InputBatches,
    plan: SizePlan,
    generated: tuple[str, str],
) -> tuple[OutputSelection, list[IOSpec]]:
    """The outputs kept from the model's result and their specs, from runs at two sizes."""
    import torch

    def run(sizes: Mapping[str, int]) -> Any:
        arrays = batches.batch(EXPORT_EXAMPLE_BATCH, sizes)
        try:
            with torch.inference_mode():
                return call(*to_torch(arrays, batches.specs))
        except Exception as exc:
            fed, hint = generated
            specs = ", ".join(map(str, batches.specs))
            raise ExportError(
                f"the model fails on inputs of the declared specs ({specs}; {fed}): "
                f"{summarize_exception(exc, max_lines=4)}\n{hint}",
                stage="load",
            ) from None

    result = run(plan.export)
    selection = select_outputs(result, requested)
    firsts = [t.detach().cpu().numpy() for t in selection.pick(result)]
    varied = plan.sets[1] if len(plan.sets) > 1 else None
    seconds: list[np.ndarray | None] = [None] * len(firsts)
    if varied is not None:
        seconds = [t.detach().cpu().numpy() for t in selection.pick(run(varied))]
    specs = []
    for name, array, other in zip(selection.names, firsts, seconds, strict=True):
        if array.ndim < 1 or array.shape[0] != EXPORT_EXAMPLE_BATCH:
            raise ExportError(
                f"output '{name}' has shape {tuple(array.shape)}: every output "
                "must keep the batch as its first dim",
                stage="load",
            )
        if array.dtype not in DATATYPE_BY_NUMPY_DTYPE:
            raise ExportError(
                f"output '{name}' has dtype {array.dtype}, which ferry cannot export", stage="load"
            )
        if array.ndim < 2:
            raise ExportError(
                f"output '{name}' has no dim besides the batch (shape "
                f"{tuple(array.shape)}): return shape (batch, 1) instead, which "
                "Triton's config can describe",
                stage="load",
            )
        if other is not None and other.ndim != array.ndim:
            raise ExportError(f"output '{name}' changes rank with the input sizes", stage="load")
        sizes = [plan.export, varied] if varied is not None else [plan.export]
        dims = _output_dims(name, array, other, sizes)  # type: ignore[arg-type]
        specs.append(IOSpec(name, DATATYPE_BY_NUMPY_DTYPE[array.dtype], dims))
    return selection, specs
