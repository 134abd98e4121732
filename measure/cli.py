"""`ferry bench`: perf_analyzer's measurements for any KServe v2 server, and `--sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from measure.model_info import BenchError


def _numbers(value: str, kind: type, flag: str) -> tuple[Any, ...]:
    try:
        parsed = tuple(kind(v) for v in value.replace(":", ",").split(",") if v.strip())
    except ValueError as exc:
        raise BenchError(f"{flag} '{value}': expected a comma-separated list of numbers") from exc
    if not parsed or any(v <= 0 for v in parsed):
        raise BenchError(f"{flag} '{value}': every value must be positive")
    return parsed


def _preferred(value: str | None) -> tuple[int | None, ...] | None:
    if value is None:
        return None
    sizes: list[int | None] = []
    for item in value.split(","):
        item = item.strip()
        if item in ("none", "-", ""):
            sizes.append(None)
        elif item.isdigit() and int(item) > 0:
            sizes.append(int(item))
        else:
            raise BenchError(f"--preferred-batch-sizes '{value}': numbers or 'none'")
    return tuple(sizes)


def bench(
    model: Annotated[str, typer.Argument(help="Model name on the server.")],
    url: Annotated[
        str | None,
        typer.Option(help="Server HOST:PORT (default localhost:8000 for http, :8001 for grpc)."),
    ] = None,
    protocol: Annotated[str, typer.Option(help="http or grpc.")] = "http",
    binary: Annotated[
        bool,
        typer.Option(
            "--binary/--json",
            help="HTTP tensor encoding: the binary tensor extension or JSON.",
        ),
    ] = True,
    shared_memory: Annotated[
        str,
        typer.Option(help="none or system: inputs and outputs in POSIX shared memory regions."),
    ] = "none",
    output_shared_memory_size: Annotated[
        int | None,
        typer.Option(
            help="Bytes per output region (default: from the output's shape, else 100 KiB)."
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(help="Requests kept in flight, one level per value: 1,8,64 (default 1)."),
    ] = None,
    request_rate: Annotated[
        str | None,
        typer.Option(
            help="Requests sent per second, one level per value (instead of concurrency)."
        ),
    ] = None,
    request_distribution: Annotated[
        str, typer.Option(help="Request-rate intervals: constant or poisson.")
    ] = "constant",
    duration: Annotated[
        float,
        typer.Option(
            help="Seconds measured per level when stable at once: three windows of DURATION/3 "
            "(unstable levels take more windows, up to --max-trials)."
        ),
    ] = 6.0,
    warmup: Annotated[float, typer.Option(help="Seconds of load before measuring a level.")] = 1.0,
    stability_percentage: Annotated[
        float,
        typer.Option(
            help="Stable when the last three windows' throughput and latency are within this."
        ),
    ] = 10.0,
    max_trials: Annotated[int, typer.Option(help="Most windows per level.")] = 10,
    percentile: Annotated[
        int | None,
        typer.Option(help="Stabilize on this latency percentile instead of the average."),
    ] = None,
    input_data: Annotated[
        str,
        typer.Option(help="random, zero, or an .npz file with one array per input."),
    ] = "random",
    shape: Annotated[
        list[str] | None,
        typer.Option(help="NAME:DIMS for inputs with -1 dims, without the batch dim. Repeatable."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per request.")] = 1,
    sequence_length: Annotated[
        int, typer.Option(help="Requests per sequence (sequence models).")
    ] = 20,
    model_version: Annotated[
        str, typer.Option(help="Model version (default: the server's policy).")
    ] = "",
    report: Annotated[Path | None, typer.Option(help="Write the full results as JSON.")] = None,
    csv: Annotated[
        Path | None, typer.Option(help="Write perf_analyzer-style CSV (latencies in µs).")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Latency-throughput chart: FILE.png, FILE.svg or FILE.html."),
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            help="Try serving configs of the model in --model-repository with ferry serve and "
            "report the throughput/latency frontier."
        ),
    ] = False,
    model_repository: Annotated[
        Path | None, typer.Option(help="--sweep: the repository holding the model.")
    ] = None,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(help="--sweep: p99 budget; the pick is the highest throughput within it."),
    ] = None,
    instance_counts: Annotated[
        str, typer.Option(help="--sweep: instance_group counts to try.")
    ] = "1,2",
    preferred_batch_sizes: Annotated[
        str | None,
        typer.Option(
            help="--sweep: preferred batch sizes to try, 'none' for none (default: none and "
            "half of max_batch_size)."
        ),
    ] = None,
    queue_delays_us: Annotated[
        str, typer.Option(help="--sweep: max_queue_delay_microseconds values to try.")
    ] = "0,2000",
    apply: Annotated[
        bool, typer.Option(help="--sweep: write the picked config to config.pbtxt.")
    ] = False,
) -> None:
    """Measure a model on any KServe v2 server (ferry, Triton, MLServer, KServe).

    Keeps --concurrency requests in flight (or sends --request-rate a second), warms up, measures
    windows until three in a row agree within --stability-percentage, and reports throughput,
    p50/p90/p95/p99 latency, errors by status and the server's queue/compute split (from its
    statistics endpoint). With --sweep it tries serving configs instead (Model Analyzer's job).
    """
    import asyncio

    from rich.console import Console
    from rich.markup import escape

    from measure import report as reports
    from measure.inputs import parse_shapes
    from measure.profile import BenchOptions, run_bench

    console, errors = Console(), Console(stderr=True)
    if not console.is_terminal:  # piped: a wide table rather than one cut at 80 columns
        console.width = max(console.width, 160)
    try:
        if concurrency is not None and request_rate is not None:
            raise BenchError("give --concurrency or --request-rate, not both")
        if duration <= 0 or warmup < 0:
            raise BenchError("--duration must be positive and --warmup not negative")
        levels = _numbers(concurrency, int, "--concurrency") if concurrency else ()
        rates = _numbers(request_rate, float, "--request-rate") if request_rate else ()
        options = BenchOptions(
            model=model,
            url=url or ("localhost:8001" if protocol == "grpc" else "localhost:8000"),
            protocol=protocol,
            binary=binary,
            model_version=model_version,
            concurrency=levels or (() if rates else (1,)),
            request_rates=rates,
            request_distribution=request_distribution,
            window_s=duration / 3,
            warmup_s=warmup,
            stability=stability_percentage / 100,
            max_trials=max(3, max_trials),
            percentile=percentile,
            input_data=input_data,
            shapes=parse_shapes(shape or []),
            batch_size=batch_size,
            sequence_length=sequence_length,
            shared_memory=shared_memory,
            output_shared_memory_bytes=output_shared_memory_size,
        )
        if request_distribution not in ("constant", "poisson"):
            raise BenchError("--request-distribution must be constant or poisson")
        if sweep:
            _sweep(
                options,
                console,
                model_repository,
                latency_budget_ms,
                _numbers(instance_counts, int, "--instance-counts"),
                _preferred(preferred_batch_sizes),
                tuple(int(v) for v in queue_delays_us.split(",") if v.strip()),
                apply,
                report,
                plot,
            )
            return
        with console.status("measuring") as status:
            result = asyncio.run(
                _run(run_bench(options, progress=lambda text: status.update(f"measuring {text}")))
            )
    except BenchError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from exc
    console.print(reports.bench_table(result))
    for level in result["levels"]:
        for status_name, text in level["error_messages"].items():
            console.print(
                f"  {reports.level_name(level)}: {status_name}: {escape(text)}", highlight=False
            )
    if report is not None:
        reports.write_json(result, report)
    if csv is not None:
        csv.write_text(reports.csv_text(result))
    if plot is not None:
        from measure.plots import write_bench_plot

        write_bench_plot(result, plot)


async def _run(coroutine: Any) -> Any:
    return await coroutine


def _sweep(
    options: Any,
    console: Any,
    repository: Path | None,
    budget_ms: float | None,
    instance_counts: tuple[int, ...],
    preferred: tuple[int | None, ...] | None,
    delays: tuple[int, ...],
    apply: bool,
    report: Path | None,
    plot: Path | None,
) -> None:
    from dataclasses import replace

    from rich.markup import escape
    from rich.table import Table

    from measure import report as reports
    from measure.sweep import SweepOptions, run_sweep

    if repository is None:
        raise BenchError("--sweep needs --model-repository (it serves copies of the model)")
    if options.concurrency == (1,) and not options.request_rates:
        options = replace(options, concurrency=(1, 8, 32))
    sweep_options = SweepOptions(
        repository=repository,
        instance_counts=instance_counts,
        preferred_batch_sizes=preferred,
        queue_delays_us=delays,
        latency_budget_ms=budget_ms,
        apply=apply,
    )
    with console.status("sweeping") as status:
        result = run_sweep(options, sweep_options, progress=status.update)
    table = Table(title=f"ferry bench --sweep {options.model}: the throughput/latency frontier")
    for column in ("config", "concurrency", "infer/s", "p50 ms", "p99 ms", "within budget"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for point in result["frontier"]:
        within = budget_ms is None or point["p99_ms"] <= budget_ms
        table.add_row(
            point["config"],
            str(point["concurrency"]),
            f"{point['throughput_infer_s']:.1f}",
            f"{point['p50_ms']:.2f}",
            f"{point['p99_ms']:.2f}",
            "yes" if within else "no",
        )
    console.print(table)
    best = result["best"]
    if best is None:
        console.print(f"no config met the p99 budget of {budget_ms} ms without errors")
    else:
        console.print(
            f"best: [bold]{escape(best['config'])}[/bold] at concurrency {best['concurrency']}: "
            f"{best['throughput_infer_s']:.1f} infer/s, p99 {best['p99_ms']:.2f} ms"
        )
        if result["applied"]:
            console.print(f"written to {escape(result['applied'])}")
    if report is not None:
        reports.write_json(result, report)
    if plot is not None:
        from measure import html_page
        from measure.plots import sweep_chart, write_chart

        rows = [
            [
                p["config"],
                f"{p['concurrency']:g}",
                f"{p['throughput_infer_s']:.1f}",
                f"{p['p50_ms']:.2f}",
                f"{p['p99_ms']:.2f}",
                str(p["errors"]),
            ]
            for p in result["points"]
        ]
        headers = ["config", "concurrency", "infer/s", "p50 ms", "p99 ms", "errors"]
        write_chart(sweep_chart(result), plot, html_page.table(headers, rows))


def register(app: typer.Typer) -> None:
    """Mount `ferry bench` on the ferry app."""
    app.command("bench")(bench)
