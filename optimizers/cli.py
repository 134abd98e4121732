"""`ferry optimize`: build variants, gate them on task accuracy, benchmark, publish the fastest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from optimizers.onnx_variants import STATIC_EXCLUDED_OPS
from optimizers.pipeline import OptimizeOptions, run_optimize
from optimizers.source import OptimizeError

REPORTS_FOLDER = "optimize_reports"  # non-numeric: Triton and ferry do not take it for a version


def optimize(
    name: Annotated[str, typer.Argument(help="Model name (folder under the repository).")],
    model_repository: Annotated[Path, typer.Option(help="Triton-layout model repository.")],
    eval_data: Annotated[
        Path,
        typer.Option(
            help="Labelled .npz: one array per model input plus `labels`; scores every variant."
        ),
    ],
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="Unlabelled .npz for INT8 static calibration (use data disjoint from eval)."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="accuracy|precision|recall|f1|auc|mae|mse|rmse|r2 (default: accuracy for "
            "classifiers, r2 for regressors)."
        ),
    ] = None,
    max_drop: Annotated[
        float, typer.Option(help="Largest allowed absolute metric drop versus FP32.")
    ] = 0.01,
    target: Annotated[str, typer.Option(help="cpu | cuda | tensorrt")] = "cpu",
    variants: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: ort-fp32,int8-dynamic,int8-static,fp16,ort-tensorrt-ep,"
            "tensorrt-fp16,tensorrt-int8 (default: the target's set)."
        ),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="throughput (at max_batch_size) or latency (p95 at batch 1).")
    ] = "throughput",
    model_version: Annotated[
        int | None,
        typer.Option(
            help="FP32 version to start from (default: newest version not made by optimize)."
        ),
    ] = None,
    output: Annotated[
        str | None, typer.Option(help="Output scored by the metric (default: the first output).")
    ] = None,
    calibration_method: Annotated[
        str, typer.Option(help="minmax | percentile | entropy")
    ] = "minmax",
    static_exclude: Annotated[
        str, typer.Option(help="Op types int8-static keeps in FP32; '' quantizes every op (naive).")
    ] = ",".join(STATIC_EXCLUDED_OPS),
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads for every candidate (default: all usable cores)."),
    ] = None,
    min_gain: Annotated[
        float,
        typer.Option(
            help="A variant must beat FP32 by this factor on the objective to be published."
        ),
    ] = 1.05,
    bench_seconds: Annotated[float, typer.Option(help="Benchmark time budget.")] = 20.0,
    publish: Annotated[
        bool,
        typer.Option(help="Publish the winner as the next version (--no-publish: report only)."),
    ] = True,
    report: Annotated[Path | None, typer.Option(help="Also write the report JSON here.")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Also write optimize_report.json and .html here (default when nothing is "
            "published: REPO/NAME/optimize_reports/<UTC time>/; published: the new version)."
        ),
    ] = None,
) -> None:
    """Build optimized variants of a model, gate them on accuracy, publish the fastest.

    Every candidate is scored on --eval-data against the FP32 model on the same data; those within
    --max-drop (and free of NaN/Inf) are benchmarked in-process on the target, and the best one that
    beats FP32 becomes the model's next version, with optimize_report.json beside it.
    """
    from rich.console import Console
    from rich.markup import escape

    from optimizers.report_html import write_reports

    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 150)
    options = OptimizeOptions(
        name=name,
        repository=model_repository,
        eval_data=eval_data,
        calibration_data=calibration_data,
        metric=metric,
        max_drop=max_drop,
        target=target,
        variants=tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else None,
        objective=objective,
        model_version=model_version,
        output=output,
        calibration_method=calibration_method,
        excluded_ops=tuple(op.strip() for op in static_exclude.split(",") if op.strip()),
        threads=threads,
        min_gain=min_gain,
        publish=publish,
        bench_seconds=bench_seconds,
    )
    try:
        with console.status("optimizing") as status:
            result = run_optimize(options, progress=lambda text: status.update(text))
    except OptimizeError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    console.print(render_table(result))
    for row in result["candidates"]:
        if row.get("reason") and ":" in row["reason"]:
            console.print(f"  {escape(row['variant'])}: {escape(row['reason'])}", highlight=False)
        details = row.get("details") or {}
        if "fused_attention" in details:
            fused = ", ".join(f"{op} x{n}" for op, n in details["transformer_fusions"].items())
            guards = details.get("layer_norm_guards", 0)
            console.print(
                f"  {escape(row['variant'])}: {details['fused_attention']} attention block(s) fused"
                + (f" ({escape(fused)})" if fused else "")
                + (
                    f"; {guards} LayerNormalization(s) kept out of SkipLayerNormalization"
                    if guards
                    else ""
                ),
                highlight=False,
            )
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n")
    published = result["published"]
    written = []
    if published:  # publish wrote both files into the new version's folder
        written.append(model_repository / name / str(published["version"]))
    if report_dir is not None:
        written.append(write_reports(result, report_dir)[0].parent)
    elif not published:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        written.append(
            write_reports(result, model_repository / name / REPORTS_FOLDER / stamp)[0].parent
        )
    for folder in written:
        console.print(
            f"report: {escape(str(folder))}/optimize_report.json and optimize_report.html",
            highlight=False,
        )
    if published:
        console.print(
            f"published [bold]{escape(published['variant'])}[/bold] as version "
            f"{published['version']} of '{escape(name)}' ({result['duration_s']}s)"
        )
    elif result.get("would_publish"):
        console.print(f"would publish {result['would_publish']} (--no-publish given)")
    else:
        console.print(
            "nothing published: no variant passed the gate and beat FP32 "
            f"by {min_gain:g}x on {objective} beyond the run-to-run spread"
        )


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(value: Any) -> str:
    return "-" if value is None else f"±{value:.1%}"


def render_table(result: dict[str, Any]) -> Any:
    """A rich table of the FP32 reference and every candidate; the headers say at which batch
    size each figure was measured, and the spread columns show the run-to-run spread."""
    from rich.markup import escape
    from rich.table import Table

    reference = result["reference"]
    latency_batch = reference.get("latency_batch", 1)
    throughput_batch = reference.get("throughput_batch", "max")
    table = Table(
        title=f"ferry optimize {escape(result['model'])} ({result['target']}, "
        f"{result['metric']}, max-drop {result['max_drop']:g})",
        caption=f"latency at batch {latency_batch}, throughput at batch {throughput_batch}; "
        "spread: run-to-run spread over the interleaved blocks (a published speed-up must "
        "exceed FP32's and its own together)",
    )
    columns = (
        "variant",
        "precision",
        "metric",
        "delta",
        f"p50 ms @b{latency_batch}",
        f"p95 ms @b{latency_batch}",
        f"p99 ms @b{latency_batch}",
        "spread",
        f"throughput/s @b{throughput_batch}",
        "spread ",
        "speedup",
        "verdict",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "verdict") else "right")
    for row in [reference, *result["candidates"]]:
        verdict = (row.get("reason") or "passed").split(":")[0]
        style = "green" if row.get("passed") else "red"
        table.add_row(
            escape(row["variant"]),
            row["precision"],
            _number(row.get("value")),
            _number(row.get("delta")),
            _number(row.get("p50_ms"), 2),
            _number(row.get("p95_ms"), 2),
            _number(row.get("p99_ms"), 2),
            _spread(row.get("latency_spread")),
            _number(row.get("throughput"), 1),
            _spread(row.get("throughput_spread")),
            _number(row.get("speedup"), 2),
            f"[{style}]{escape(verdict)}[/{style}]",
        )
    return table


def register(app: typer.Typer) -> None:
    """Mount this package's commands on the ferry app."""
    app.command("optimize")(optimize)
