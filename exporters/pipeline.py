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
from exporters.errors import ExportError, summarize_exception
from exporters.onnx_export import export_onnx, model_opset
from exporters.options import ExportOptions
from exporters.parity import ParityReport, check_parity
from exporters.prepare import PreparedModel, prepare
from exporters.report import build_report, write_report
from exporters.specs import IOSpec, check_data_matches, load_npz
from server.repository_format import EXPORT_REPORT_FILENAME, REFERENCE_FILENAME, ModelConfig

__all__ = ["ExportOptions", "ExportResult", "ExportVariant", "StageListener", "run_export"]


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


class ExportVariant(Protocol):
    """A variant of the export (exporters/stateful.py): a further check of the exported file
    and a final edit of config.pbtxt."""

    def extra_verify(self, prepared: PreparedModel, model_path: Path) -> dict[str, Any]:
        """After the parity gate: raise ExportError to refuse the file, or return sections
        for export_report.json."""
        ...

    def edit_config(self, config: ModelConfig) -> None:
        """The config.pbtxt to publish, edited in place."""
        ...


def run_export(
    options: ExportOptions,
    listener: StageListener | None = None,
    variant: ExportVariant | None = None,
) -> ExportResult:
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
        prepared = prepare(options, example)
        notes += prepared.notes
        if reference is not None:
            check_data_matches(reference, prepared.inputs, "--reference-data")
        inputs, outputs = prepared.inputs, prepared.outputs
        detail.append(
            f"{prepared.loaded.kind}: {', '.join(map(str, inputs))} -> "
            f"{', '.join(map(str, outputs))}"
        )
    for text in notes:
        tell.note(text)

    with tempfile.TemporaryDirectory(prefix="ferry-export-") as tmp:
        version_files = Path(tmp) / str(version)
        version_files.mkdir()
        model_path = version_files / "model.onnx"
        with stage("export", "exporting to ONNX") as detail:
            outcome = export_onnx(
                prepared.loaded,
                prepared.model,
                prepared.args,
                inputs,
                outputs,
                options.opset,
                model_path,
            )
            opset = model_opset(model_path)
            detail.append(f"{outcome.exporter} exporter, opset {opset}")
        for text in outcome.notes:
            tell.note(text)
        notes += outcome.notes
        with stage("verify", "checking parity with PyTorch") as detail:
            parity = check_parity(
                prepared.reference,
                model_path,
                prepared.batches,
                [s.name for s in outputs],
                options.max_batch_size,
                prepared.plan,
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
            extra_report = variant.extra_verify(prepared, model_path) if variant is not None else {}
        with stage("write", f"writing {model_dir}") as detail:
            reference_name = None
            if reference is not None:
                _write_reference(version_files, model_path, reference)
                reference_name = REFERENCE_FILENAME
            report = build_report(
                source=options.source,
                source_kind=prepared.loaded.kind,
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
                binding=prepared.binding(),
                variable_dims=prepared.plan.to_json(),
                generated_inputs={name: r.to_json() for name, r in prepared.ranges.items()},
                notes=notes,
            )
            report.update(extra_report)
            write_report(version_files / EXPORT_REPORT_FILENAME, report)
            config = repository.build_config(
                options.name,
                inputs,
                outputs,
                options.max_batch_size,
                repository.existing_config(model_dir),
            )
            if variant is not None:
                variant.edit_config(config)
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
