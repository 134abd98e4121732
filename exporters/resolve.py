"""The model's input and output specs: from flags, example data, the model's signature and run."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporters.errors import ExportError, summarize_exception
from exporters.inputs import flatten_outputs, output_keys
from exporters.sources import LoadedModel
from exporters.specs import (
    DATATYPE_BY_NUMPY_DTYPE,
    LABELS_KEY,
    IOSpec,
    check_data_matches,
    parse_input_spec,
    spec_of_array,
)

EXPORT_EXAMPLE_BATCH = 2  # >= 2: an example batch of 1 freezes the batch dim


def forward_parameters(loaded: LoadedModel) -> tuple[list[str], int] | None:
    """Names of forward's tensor parameters and how many are required; None when variadic."""
    if loaded.exported_program is not None:
        names = [str(n) for n in loaded.exported_program.graph_signature.user_inputs]
        return names, len(names)
    forward = loaded.module.forward
    schema = getattr(forward, "schema", None)
    if schema is not None:  # TorchScript method: the schema's first argument is self
        arguments = list(schema.arguments)[1:]
        required = sum(
            1 for a in arguments if a.default_value is None and not a.has_default_value()
        )
        return [a.name for a in arguments], required
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    return [p.name for p in positional], required


def order_by_signature(specs: Sequence[IOSpec], loaded: LoadedModel) -> list[IOSpec]:
    """The specs in forward's parameter order; an error when they do not fit the signature."""
    signature = forward_parameters(loaded)
    if signature is None:
        return list(specs)
    names, required = signature
    shown = f"forward({', '.join(names)})"
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in by_name if name not in names]
    if unknown:
        raise ExportError(
            f"input '{unknown[0]}' is not a parameter of the model's {shown}", stage="load"
        )
    missing = [name for name in names[:required] if name not in by_name]
    if missing:
        raise ExportError(
            f"the model's {shown} needs input '{missing[0]}': add "
            f"--input {missing[0]}:DTYPE:DIMS (or put it in --example)",
            stage="load",
        )
    ordered = [by_name[name] for name in names if name in by_name]
    if [s.name for s in ordered] != names[: len(ordered)]:
        raise ExportError(
            f"inputs {', '.join(s.name for s in ordered)} skip an optional "
            f"parameter of {shown}; ferry passes inputs by position",
            stage="load",
        )
    return ordered


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
        dims = []
        for size in value.shape[1:]:
            if not isinstance(size, int):
                raise ExportError(
                    f"input '{node.name}' of the .pt2 has a dynamic non-batch dim; "
                    "pass --input with fixed dims",
                    stage="load",
                )
            dims.append(size)
        specs.append(IOSpec(node.name, DATATYPE_BY_NUMPY_DTYPE[dtype], tuple(dims)))
    return specs


def resolve_inputs(
    input_texts: Sequence[str], loaded: LoadedModel, example: Mapping[str, np.ndarray] | None
) -> list[IOSpec]:
    """Input specs from --input, else --example, else a .pt2's placeholders; in forward's order."""
    if input_texts:
        specs = [parse_input_spec(text) for text in input_texts]
        if len({s.name for s in specs}) != len(specs):
            raise ExportError("--input names must be unique", stage="load")
        if example is not None:
            check_data_matches(example, specs, "--example")
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
    return order_by_signature(specs, loaded)


def resolve_outputs(
    output_names: Sequence[str], loaded: LoadedModel, args: tuple[Any, ...]
) -> list[IOSpec]:
    """Output specs from one run of the model on the export example batch."""
    import torch

    try:
        with torch.inference_mode():
            result = loaded.module(*args)
    except Exception as exc:
        raise ExportError(
            f"the model fails on inputs of the declared specs: "
            f"{summarize_exception(exc, max_lines=4)}",
            stage="load",
        ) from None
    tensors = flatten_outputs(result)
    names = (
        list(output_names)
        or output_keys(result)
        or (["output"] if len(tensors) == 1 else [f"output_{i}" for i in range(len(tensors))])
    )
    if len(names) != len(tensors):
        raise ExportError(
            f"{len(names)} --output names given, but the model returns {len(tensors)} tensors",
            stage="load",
        )
    if len(set(names)) != len(names):
        raise ExportError("--output names must be unique", stage="load")
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        array = tensor.detach().cpu().numpy()
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
        dims = tuple(int(d) for d in array.shape[1:])
        specs.append(IOSpec(name, DATATYPE_BY_NUMPY_DTYPE[array.dtype], dims))
    return specs
