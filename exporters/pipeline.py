"""The export pipeline: load -> export -> verify -> write, each stage reported to a listener."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exporters import repository
from exporters.binding import ModelCall, check_forward_kwargs, export_module, forward_signature
from exporters.errors import ExportError, summarize_exception
from exporters.inputs import InputBatches, SizePlan, ValueRange, plan_sizes, to_torch
from exporters.onnx_export import export_onnx, model_opset
from exporters.parity import ParityReport, check_parity
from exporters.report import build_report, write_report
from exporters.resolve import EXPORT_EXAMPLE_BATCH, resolve_inputs, resolve_outputs
from exporters.sources import load_source
from exporters.specs import (
    IOSpec,
    check_data_matches,
    example_dim_sizes,
    load_npz,
    parse_dim_sizes,
)
from exporters.value_ranges import probe_arrays, probe_value_ranges
from server.repository_format import EXPORT_REPORT_FILENAME, REFERENCE_FILENAME


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


@dataclass
class ExportResult:
    """What was written and the figures behind it."""

    version_dir: Path
    version: int
    exporter: str
    opset: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    parity: ParityReport
    report: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class StageListener(Protocol):
    """Told when each stage starts and ends (the CLI draws progress from it)."""

    def stage_started(self, stage: str, description: str) -> None: ...

    def stage_finished(self, stage: str, detail: str, seconds: float) -> None: ...

    def note(self, text: str) -> None: ...


class _Silent:
    def stage_started(self, stage: str, description: str) -> None:
        return None

    def stage_finished(self, stage: str, detail: str, seconds: float) -> None:
        return None

    def note(self, text: str) -> None:
        return None


def run_export(options: ExportOptions, listener: StageListener | None = None) -> ExportResult:
    """Export, verify and write one repository entry; raises ExportError on any failure."""
    tell = listener or _Silent()
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str, description: str) -> Iterator[list[str]]:
        tell.stage_started(name, description)
        started = time.perf_counter()
        detail: list[str] = []
        yield detail
        timings[name] = time.perf_counter() - started
        tell.stage_finished(name, " ".join(detail), timings[name])

    repository.check_model_name(options.name)
    if options.max_batch_size < 1:
        raise ExportError("--max-batch-size must be at least 1", stage="load")
    if options.atol < 0 or options.rtol < 0:
        raise ExportError("--atol and --rtol must not be negative", stage="load")
    model_dir = options.repository / options.name
    version = repository.resolve_version(model_dir, options.version, options.overwrite)
    reference = _reference_inputs(options)

    notes: list[str] = []
    with stage("load", f"loading {options.source}") as detail:
        example = load_npz(options.example, "--example") if options.example else None
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
                call,
                loaded.module,
                inputs,
                probe_arrays(inputs, EXPORT_EXAMPLE_BATCH, plan.export),
            )
        )
        batches = InputBatches(inputs, example, options.seed, ranges)
        selection, outputs = resolve_outputs(
            options.outputs, call, batches, plan, _generated(inputs, ranges, plan, example)
        )
        notes += selection.notes
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
        model = export_module(call, selection)
        args = to_torch(batches.batch(EXPORT_EXAMPLE_BATCH, plan.export), inputs)
        if reference is not None:
            check_data_matches(reference, inputs, "--reference-data")
        detail.append(
            f"{loaded.kind}: {', '.join(map(str, inputs))} -> {', '.join(map(str, outputs))}"
        )
    for text in notes:
        tell.note(text)

    with tempfile.TemporaryDirectory(prefix="ferry-export-") as tmp:
        version_files = Path(tmp) / str(version)
        version_files.mkdir()
        model_path = version_files / "model.onnx"
        with stage("export", "exporting to ONNX") as detail:
            outcome = export_onnx(loaded, model, args, inputs, outputs, options.opset, model_path)
            opset = model_opset(model_path)
            detail.append(f"{outcome.exporter} exporter, opset {opset}")
        for text in outcome.notes:
            tell.note(text)
        notes += outcome.notes
        with stage("verify", "checking parity with PyTorch") as detail:
            parity = check_parity(
                lambda *tensors: selection.pick(call(*tensors)),
                model_path,
                batches,
                [s.name for s in outputs],
                options.max_batch_size,
                plan,
                options.atol,
                options.rtol,
            )
            if not parity.passed:
                first = next(c for c in parity.checks if not c.passed)
                at = ", ".join(f"{k}={v}" for k, v in first.sizes.items())
                raise ExportError(
                    "the ONNX model does not match PyTorch (parity gate failed): output "
                    f"'{first.output}' at batch {first.batch}{f' ({at})' if at else ''}: "
                    f"{first.reason}",
                    stage="verify",
                    detail=parity,
                )
            detail.append(
                f"max abs error {parity.max_abs_error():.2e} "
                f"({parity.max_error_to_scale():.1e} of the output scale)"
            )
        with stage("write", f"writing {model_dir}") as detail:
            reference_name = None
            if reference is not None:
                _write_reference(version_files, model_path, reference)
                reference_name = REFERENCE_FILENAME
            report = build_report(
                source=options.source,
                source_kind=loaded.kind,
                name=options.name,
                version=version,
                exporter=outcome.exporter,
                dynamo_error=outcome.dynamo_error,
                opset=opset,
                inputs=inputs,
                outputs=outputs,
                max_batch_size=options.max_batch_size,
                parity=parity.to_json(),
                timings_s=timings,
                model_path=model_path,
                weights=options.weights,
                example=options.example,
                reference=reference_name,
                init_args=dict(options.init_args),
                binding=call.binding(signature) | {"outputs": selection.to_json()},
                variable_dims=plan.to_json(),
                generated_inputs={name: r.to_json() for name, r in ranges.items()},
                notes=notes,
            )
            write_report(version_files / EXPORT_REPORT_FILENAME, report)
            config = repository.build_config(
                options.name,
                inputs,
                outputs,
                options.max_batch_size,
                repository.existing_config(model_dir),
            )
            version_dir = repository.publish(
                options.repository, options.name, version, version_files, config, options.overwrite
            )
            detail.append(f"version {version}")
    return ExportResult(
        version_dir,
        version,
        outcome.exporter,
        opset,
        inputs,
        outputs,
        parity,
        report,
        timings,
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


def _reference_inputs(options: ExportOptions) -> dict[str, np.ndarray] | None:
    """The --reference-data arrays, after checking the drift reference builder exists."""
    if options.reference_data is None:
        return None
    try:
        from monitoring import reference as _reference  # noqa: F401
    except ImportError:
        raise ExportError(
            "--reference-data: the drift reference builder "
            "(monitoring.reference.write_reference) is not available in this "
            "install",
            stage="load",
        ) from None
    return load_npz(options.reference_data, "--reference-data")


def _write_reference(version_dir: Path, model_path: Path, data: Mapping[str, np.ndarray]) -> None:
    from monitoring.reference import write_reference

    try:
        write_reference(version_dir, model_path, data)
    except Exception as exc:
        raise ExportError(
            f"building the drift reference failed: {summarize_exception(exc)}", stage="write"
        ) from None
