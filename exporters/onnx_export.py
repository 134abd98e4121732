"""torch -> one self-contained model.onnx with named dynamic dims (dynamo or TorchScript)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ExportError, summarize_exception
from exporters.sources import LoadedModel
from exporters.specs import IOSpec

BATCH_DIM_NAME = "batch"
MAX_MODEL_BYTES = 2 * 1024**3
# The TorchScript exporter's highest opset.
TORCHSCRIPT_MAX_OPSET = 20


@dataclass
class ExportOutcome:
    """Which exporter wrote the file, at which opset, and why dynamo was not used (if not)."""

    path: Path
    exporter: str
    opset: int
    seconds: float
    dynamo_error: str | None = None
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporters' warnings, logs and prints; their failures still raise."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch._dynamo")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _quiet_native_stdout() -> Iterator[None]:
    """Swallow what C++ prints to fd 1 (the TorchScript exporter dumps its IR graph there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def export_onnx(
    loaded: LoadedModel,
    model: Any,
    args: tuple[Any, ...],
    inputs: Sequence[IOSpec],
    outputs: Sequence[IOSpec],
    opset: int,
    destination: Path,
) -> ExportOutcome:
    """Export with dynamo; fall back to the TorchScript exporter when dynamo fails.

    `model` takes the inputs by position (`binding.export_module`); a Hugging Face model whose
    SDPA attention does not decompose (T5: a `view` of the transposed attention output) is
    exported again by dynamo with its eager attention before falling back.
    """
    started = time.perf_counter()
    notes: list[str] = []
    try:
        _export_dynamo(loaded, model, args, inputs, outputs, opset, destination)
        check_dynamic_dims(destination, inputs, outputs)
        return ExportOutcome(destination, "dynamo", opset, time.perf_counter() - started)
    except Exception as exc:
        dynamo_error = summarize_exception(exc)
        if loaded.exported_program is not None:
            raise ExportError(
                f"the ExportedProgram could not be exported to ONNX:\n{dynamo_error}",
                stage="export",
            ) from None
    destination.unlink(missing_ok=True)
    if _use_eager_attention(loaded.module):
        try:
            _export_dynamo(loaded, model, args, inputs, outputs, opset, destination)
            check_dynamic_dims(destination, inputs, outputs)
            notes.append(
                "exported with the model's eager attention: its SDPA attention failed in "
                f"dynamo ({dynamo_error.splitlines()[0]})"
            )
            return ExportOutcome(
                destination, "dynamo", opset, time.perf_counter() - started, None, notes
            )
        except Exception as exc:
            dynamo_error += f"\nwith eager attention: {summarize_exception(exc)}"
        destination.unlink(missing_ok=True)
    ts_opset = min(opset, TORCHSCRIPT_MAX_OPSET)
    try:
        _export_torchscript(model, args, inputs, outputs, ts_opset, destination)
        check_dynamic_dims(destination, inputs, outputs)
    except Exception as exc:
        raise ExportError(
            "the model cannot be exported to ONNX.\n"
            f"dynamo exporter: {dynamo_error}\n"
            f"TorchScript exporter: {summarize_exception(exc)}",
            stage="export",
        ) from None
    return ExportOutcome(
        destination, "torchscript", ts_opset, time.perf_counter() - started, dynamo_error, notes
    )


def _use_eager_attention(module: Any) -> bool:
    """Switch a Hugging Face model from SDPA to its eager attention; False when not one."""
    config = getattr(module, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        module.set_attn_implementation("eager")
    except Exception:
        return False
    return True


def dynamic_shapes_of(inputs: Sequence[IOSpec]) -> tuple[tuple[dict[int, Any], ...]]:
    """torch.export dynamic shapes for `forward(*inputs)`: one named Dim per dim name."""
    import torch

    dims: dict[str, Any] = {BATCH_DIM_NAME: torch.export.Dim(BATCH_DIM_NAME, min=1)}
    shapes = []
    for spec in inputs:
        axes: dict[int, Any] = {0: dims[BATCH_DIM_NAME]}
        for axis, name in spec.variable_axes.items():
            axes[axis] = dims.setdefault(name, torch.export.Dim(name, min=1))
        shapes.append(axes)
    return (tuple(shapes),)


def _export_dynamo(
    loaded: LoadedModel,
    model: Any,
    args: tuple[Any, ...],
    inputs: Sequence[IOSpec],
    outputs: Sequence[IOSpec],
    opset: int,
    destination: Path,
) -> None:
    import torch

    program_source = loaded.exported_program
    dynamic_shapes: Any = None if program_source is not None else dynamic_shapes_of(inputs)

    def export(shapes: Any) -> Any:
        return torch.onnx.export(
            program_source if program_source is not None else model,
            args,
            None,
            dynamo=True,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=opset,
            dynamic_shapes=shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )

    with quiet_exporter():
        try:
            program = export(dynamic_shapes)
        except Exception as exc:
            # torch.export's own suggestions (e.g. seq_len <= 512 from a position table)
            refine = torch.export.dynamic_shapes.refine_dynamic_shapes_from_suggested_fixes
            if dynamic_shapes is None or "Suggested fixes" not in str(exc):
                raise
            program = export(refine(str(exc), dynamic_shapes))
        if program is None:
            raise ExportError("the dynamo exporter returned no program", stage="export")
        program.save(str(destination), external_data=False)


def _export_torchscript(
    model: Any,
    args: tuple[Any, ...],
    inputs: Sequence[IOSpec],
    outputs: Sequence[IOSpec],
    opset: int,
    destination: Path,
) -> None:
    import torch

    axes = {spec.name: {0: BATCH_DIM_NAME, **spec.variable_axes} for spec in [*inputs, *outputs]}
    with quiet_exporter(), _quiet_native_stdout():
        torch.onnx.export(
            model,
            args,
            str(destination),
            dynamo=False,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def check_dynamic_dims(path: Path, inputs: Sequence[IOSpec], outputs: Sequence[IOSpec]) -> None:
    """The saved graph has the expected names, a symbolic batch dim and symbolic variable dims
    on every I/O, and no sidecar file."""
    import onnx

    size = path.stat().st_size
    if size >= MAX_MODEL_BYTES:
        raise ExportError(
            f"model.onnx is {size / 1024**3:.1f} GiB: ferry writes one "
            "self-contained file, which ONNX limits to 2 GiB",
            stage="export",
        )
    if any(p.name != path.name for p in path.parent.iterdir() if p.name.startswith(path.name)):
        raise ExportError("the exporter wrote external data files", stage="export")
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    _check_names("input", [v.name for v in graph_inputs], [s.name for s in inputs])
    _check_names("output", [v.name for v in model.graph.output], [s.name for s in outputs])
    specs = {s.name: s for s in [*inputs, *outputs]}
    for value in [*graph_inputs, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        if not dims or dims[0].HasField("dim_value"):
            raise ExportError(
                f"'{value.name}' has a static first dim in the exported graph "
                f"({shape}): the batch dim was not kept dynamic",
                stage="export",
            )
        for axis, name in specs[value.name].variable_axes.items():
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                raise ExportError(
                    f"the exported graph fixed the variable dim '{name}' of '{value.name}' "
                    f"(axis {axis}) to {dims[axis].dim_value} (shape {shape}): the model's "
                    "code specializes it at this size (a branch on the size, a reshape to a "
                    "constant); export at another size (the first of --dim-sizes)",
                    stage="export",
                )


def _check_names(kind: str, actual: list[str], expected: Sequence[str]) -> None:
    if actual != list(expected):
        raise ExportError(
            f"the exported graph's {kind}s are {actual}, expected {list(expected)}", stage="export"
        )


def model_opset(path: Path) -> int:
    """The default-domain opset the saved model imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
