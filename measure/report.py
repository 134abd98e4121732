"""`ferry bench` results for people (a rich table) and for tools (JSON, perf_analyzer-style CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

CSV_COLUMNS = (
    "Inferences/Second",
    "Requests/Second",
    "Server Overhead",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Avg latency",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg Batch",
    "Errors",
    "Stable",
)


def level_name(level: dict[str, Any]) -> str:
    if "concurrency" in level:
        return f"concurrency {level['concurrency']:g}"
    return f"rate {level['request_rate']:g}/s"


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN -> "-"


def bench_table(report: dict[str, Any]) -> Table:
    """One row per load level: client throughput and latency, errors, the server's split."""
    table = Table(
        title=f"ferry bench {report['model']} ({report['protocol']} {report['encoding']}, "
        f"batch {report['batch_size']}, {report['url']})",
        caption="server columns: average µs per request from the server's statistics over the "
        "measured windows",
    )
    for column in (
        "load",
        "infer/s",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "queue µs",
        "compute in/infer/out µs",
        "overhead µs",
        "batch",
        "stable",
    ):
        table.add_column(column, justify="left" if column in ("load", "errors") else "right")
    for level in report["levels"]:
        latency, server = level["latency_ms"], level.get("server")
        errors = ", ".join(f"{k}: {v}" for k, v in level["errors"].items()) or "0"
        table.add_row(
            level_name(level),
            f"{level['throughput_infer_s']:.1f}",
            _ms(latency["p50"]),
            _ms(latency["p90"]),
            _ms(latency["p95"]),
            _ms(latency["p99"]),
            errors,
            f"{server['queue_us']:.0f}" if server else "n/a",
            (
                f"{server['compute_input_us']:.0f}/{server['compute_infer_us']:.0f}/"
                f"{server['compute_output_us']:.0f}"
                if server
                else "n/a"
            ),
            f"{server['overhead_us']:.0f}" if server else "n/a",
            f"{server['avg_batch']:.1f}" if server else "n/a",
            "yes" if level["stable"] else f"no ({level['windows']} windows)",
        )
    return table


def finite(value: Any) -> Any:
    """The report with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")


def csv_text(report: dict[str, Any]) -> str:
    """perf_analyzer's CSV layout (latencies in µs, rows by increasing throughput), plus a few
    columns of ferry's."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    levels = sorted(report["levels"], key=lambda level: level["throughput_infer_s"])
    first = "Concurrency" if all("concurrency" in level for level in levels) else "Request Rate"
    writer.writerow([first, *CSV_COLUMNS])
    for level in levels:
        server = level.get("server") or {}
        latency = level["latency_ms"]

        def us(value: float) -> str:
            return "" if value != value else str(round(value * 1000))

        writer.writerow(
            [
                f"{level.get('concurrency', level.get('request_rate')):g}",
                f"{level['throughput_infer_s']:.1f}",
                f"{level['throughput_req_s']:.1f}",
                *(
                    str(round(server[key])) if server else ""
                    for key in (
                        "overhead_us",
                        "queue_us",
                        "compute_input_us",
                        "compute_infer_us",
                        "compute_output_us",
                    )
                ),
                us(latency["avg"]),
                *(us(latency[f"p{p}"]) for p in (50, 90, 95, 99)),
                f"{server['avg_batch']:.2f}" if server else "",
                str(sum(level["errors"].values())),
                "1" if level["stable"] else "0",
            ]
        )
    return buffer.getvalue()
