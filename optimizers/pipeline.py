"""`ferry optimize` end to end: validate, build, gate, benchmark, pick, publish, report."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizers import accuracy, benchmark, variants
from optimizers.fingerprint import fingerprint
from optimizers.onnx_variants import STATIC_EXCLUDED_OPS
from optimizers.publish import publish
from optimizers.runners import (
    PROVIDERS_BY_TARGET,
    OrtRunner,
    default_threads,
    repeat_to,
    run_dataset,
    slice_inputs,
)
from optimizers.selection import choose, summarize
from optimizers.source import Dataset, OptimizeError, SourceModel, load_dataset, locate_source
from server.repository_format import tensor_specs
from server.runtimes import Runtime

MIN_CALIBRATION_SAMPLES = 32
REWRITE_CHECK_SAMPLES = 8  # eval samples a graph rewrite (attention fusion) must reproduce
OBJECTIVES = ("throughput", "latency")


@dataclass(frozen=True)
class OptimizeOptions:
    """Everything `ferry optimize` can be told."""

    name: str
    repository: Path
    eval_data: Path
    calibration_data: Path | None = None
    metric: str | None = None
    max_drop: float = 0.01
    target: str = "cpu"
    variants: tuple[str, ...] | None = None
    objective: str = "throughput"
    model_version: int | None = None
    output: str | None = None
    calibration_method: str = "minmax"
    excluded_ops: tuple[str, ...] = STATIC_EXCLUDED_OPS
    threads: int | None = None
    min_gain: float = 1.05
    publish: bool = True
    bench_seconds: float = 20.0
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "ferry" / "tensorrt")


def _validate(options: OptimizeOptions) -> tuple[str, ...]:
    """Check the options that need no files; returns the variants to try."""
    if options.target not in variants.TARGETS:
        raise OptimizeError(f"unknown target '{options.target}'; choose {variants.TARGETS}")
    if options.objective not in OBJECTIVES:
        raise OptimizeError(f"unknown objective '{options.objective}'; choose {OBJECTIVES}")
    if options.metric is not None and options.metric not in accuracy.METRICS:
        raise OptimizeError(
            f"unknown metric '{options.metric}'; choose one of {', '.join(accuracy.METRICS)}"
        )
    if options.max_drop < 0:
        raise OptimizeError("--max-drop must be >= 0")
    chosen = options.variants or variants.DEFAULT_VARIANTS[options.target]
    for name in chosen:
        spec = variants.VARIANTS.get(name)
        if spec is None:
            raise OptimizeError(
                f"unknown variant '{name}'; choose from {', '.join(variants.VARIANTS)}"
            )
        if options.target not in spec.targets:
            raise OptimizeError(
                f"variant '{name}' does not run on target '{options.target}' "
                f"(it runs on {', '.join(spec.targets)})"
            )
        if options.variants and spec.needs_calibration and options.calibration_data is None:
            raise OptimizeError(f"variant '{name}' needs --calibration-data")
    return tuple(chosen)


def run_optimize(
    options: OptimizeOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the whole pipeline and return the report (published or not)."""
    started = time.perf_counter()
    chosen = _validate(options)
    if options.target != "cpu":
        from optimizers.tensorrt_build import require_target

        require_target(options.target)
    source = locate_source(options.repository, options.name, options.model_version)
    evaluation = load_dataset(options.eval_data, source, role="eval", need_labels=True)
    calibration = (
        None
        if options.calibration_data is None
        else load_dataset(
            options.calibration_data,
            source,
            role="calibration",
            need_labels=False,
            min_samples=MIN_CALIBRATION_SAMPLES,
        )
    )
    _, outputs = tensor_specs(source.config)
    output_names = [spec.name for spec in outputs]
    prediction = options.output or output_names[0]
    if prediction not in output_names:
        raise OptimizeError(f"model has no output '{prediction}' (outputs: {output_names})")
    threads = options.threads or default_threads()
    work_dir = Path(tempfile.mkdtemp(prefix="ferry-optimize-"))
    runtimes: dict[str, Runtime] = {}
    try:
        progress(f"FP32 reference: version {source.version} on {evaluation.count} samples")
        reference_runtime = OrtRunner(
            source.onnx_path, PROVIDERS_BY_TARGET[options.target], threads
        )
        runtimes["fp32"] = reference_runtime
        reference = _run(reference_runtime, evaluation, output_names, source)
        assert evaluation.labels is not None
        task = accuracy.infer_task(
            evaluation.labels, reference[prediction], prediction, options.metric
        )
        reference_value = accuracy.metric_value(task, reference[prediction], evaluation.labels)
        rows: list[dict[str, Any]] = []
        artifacts: dict[str, variants.Artifact] = {}
        context = variants.BuildContext(
            source,
            work_dir,
            options.target,
            calibration,
            options.calibration_method,
            options.excluded_ops,
            {n: tuple(a.shape[1:]) for n, a in evaluation.inputs.items()},
            options.cache_dir,
            samples=slice_inputs(
                evaluation.inputs,
                0,
                min(evaluation.count, REWRITE_CHECK_SAMPLES),
                source.max_batch_size > 0,
            ),
        )
        for name in chosen:
            spec = variants.VARIANTS[name]
            row: dict[str, Any] = {
                "variant": name,
                "precision": spec.precision,
                "metric": task.metric,
            }
            rows.append(row)
            if spec.needs_calibration and calibration is None:
                row.update(passed=False, reason="skipped: needs --calibration-data")
                continue
            progress(f"building {name}")
            try:
                built = time.perf_counter()
                artifact = variants.build(spec, context)
                row["build_s"] = round(time.perf_counter() - built, 3)
                row["details"] = artifact.details
                progress(f"checking {name} accuracy")
                benchmark.reset_peak_rss()
                rss = benchmark.rss_bytes()
                runtime = artifact.open(options.target, threads, source)
                result = _run(runtime, evaluation, output_names, source)
                row["peak_memory_mb"] = round((benchmark.peak_rss_bytes() - rss) / 2**20, 1)
            except Exception as exc:  # a variant that cannot be built fails alone
                row.update(passed=False, reason=f"build failed: {type(exc).__name__}: {exc}")
                continue
            verdict = accuracy.gate(
                task, reference, reference_value, result, evaluation.labels, options.max_drop
            )
            row.update(
                value=verdict.value,
                delta=verdict.delta,
                passed=verdict.passed,
                reason=verdict.reason,
                top1_agreement=verdict.top1_agreement,
                max_abs_diff=verdict.max_abs_diff,
            )
            if verdict.passed and options.target not in spec.benchmarked_on:
                row["reason"] = (
                    f"not benchmarked: on {options.target} FP16 is slower than "
                    "FP32 in ONNX Runtime on CPU (checked for correctness only)"
                )
                runtime.close()
            elif verdict.passed:
                runtimes[name], artifacts[name] = runtime, artifact
            else:
                runtime.close()
        progress(f"benchmarking {len(runtimes)} model(s)")
        batches = sorted({1, max(1, source.max_batch_size)})
        inputs = {
            b: repeat_to(evaluation.inputs, evaluation.count, b, source.max_batch_size > 0)
            for b in batches
        }
        timings = benchmark.benchmark(
            runtimes, inputs, output_names, budget_s=options.bench_seconds
        )
        reference_row = {
            "variant": "fp32",
            "precision": "fp32",
            "metric": task.metric,
            "value": reference_value,
            "delta": 0.0,
            "passed": True,
            "reason": "reference",
            "version": source.version,
        }
        for row in [reference_row, *rows]:
            if row["variant"] in timings:
                row.update(summarize(timings[row["variant"]]))
        winner = choose(reference_row, rows, options.objective, options.min_gain)
        report: dict[str, Any] = {
            "model": source.name,
            "source_version": source.version,
            "target": options.target,
            "objective": options.objective,
            "metric": task.metric,
            "task": task.kind,
            "max_drop": options.max_drop,
            "eval_samples": evaluation.count,
            "eval_data": str(options.eval_data),
            "calibration_data": str(options.calibration_data or "") or None,
            "reference": reference_row,
            "candidates": rows,
            "published": None,
            "fingerprint": fingerprint(options.target, threads),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        report["duration_s"] = round(time.perf_counter() - started, 1)
        if winner is not None and options.publish:
            progress(f"publishing {winner}")
            publish(source, artifacts[winner], report)
        elif winner is not None:
            report["would_publish"] = winner
        return report
    finally:
        for runtime in runtimes.values():
            runtime.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(
    runtime: Runtime, data: Dataset, output_names: list[str], source: SourceModel
) -> dict[str, Any]:
    return run_dataset(runtime, data.inputs, data.count, output_names, source.max_batch_size)
