"""torch -> one self-contained model.onnx with a named dynamic batch dim (dynamo or TorchScript)."""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.errors import ExportError, summarize_exception
from exporters.sources import LoadedModel

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
    args: tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    destination: Path,
) -> ExportOutcome:
    """Export with dynamo; fall back to the TorchScript exporter when dynamo fails."""
    started = time.perf_counter()
    try:
        _export_dynamo(loaded, args, input_names, output_names, opset, destination)
        check_dynamic_batch(destination, input_names, output_names)
        return ExportOutcome(destination, "dynamo", opset, time.perf_counter() - started)
    except Exception as exc:
        dynamo_error = summarize_exception(exc)
        if loaded.exported_program is not None:
            raise ExportError(
                f"the ExportedProgram could not be exported to ONNX:\n{dynamo_error}",
                stage="export",
            ) from None
    destination.unlink(missing_ok=True)
    ts_opset = min(opset, TORCHSCRIPT_MAX_OPSET)
    try:
        _export_torchscript(loaded, args, input_names, output_names, ts_opset, destination)
        check_dynamic_batch(destination, input_names, output_names)
    except Exception as exc:
        raise ExportError(
            "the model cannot be exported to ONNX.\n"
            f"dynamo exporter: {dynamo_error}\n"
            f"TorchScript exporter: {summarize_exception(exc)}",
            stage="export",
        ) from None
    return ExportOutcome(
        destination, "torchscript", ts_opset, time.perf_counter() - started, dynamo_error
    )


def _export_dynamo(
    loaded: LoadedModel,
    args: tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    destination: Path,
) -> None:
    import torch

    model = loaded.exported_program if loaded.exported_program is not None else loaded.module
    dynamic_shapes = None
    if loaded.exported_program is None:
        batch = torch.export.Dim(BATCH_DIM_NAME, min=1)
        dynamic_shapes = tuple({0: batch} for _ in args)
    with quiet_exporter():
        program = torch.onnx.export(
            model,
            args,
            None,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )
        if program is None:
            raise ExportError("the dynamo exporter returned no program", stage="export")
        program.save(str(destination), external_data=False)


def _export_torchscript(
    loaded: LoadedModel,
    args: tuple[Any, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    destination: Path,
) -> None:
    import torch

    axes = {name: {0: BATCH_DIM_NAME} for name in [*input_names, *output_names]}
    with quiet_exporter(), _quiet_native_stdout():
        torch.onnx.export(
            loaded.module,
            args,
            str(destination),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def check_dynamic_batch(
    path: Path, input_names: Sequence[str], output_names: Sequence[str]
) -> None:
    """The saved graph has the expected names, a symbolic first dim on every I/O, no sidecar."""
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
    inputs = [v for v in model.graph.input if v.name not in initializers]
    _check_names("input", [v.name for v in inputs], input_names)
    _check_names("output", [v.name for v in model.graph.output], output_names)
    for value in [*inputs, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            raise ExportError(
                f"'{value.name}' has a static first dim in the exported graph "
                f"({shape}): the batch dim was not kept dynamic",
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
