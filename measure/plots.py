"""`ferry bench --plot`: the latency-throughput curve as PNG, SVG or a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from measure import html_page
from measure.charts import PALETTE, Chart, Series, png, svg
from measure.model_info import BenchError
from measure.report import level_name

SUFFIXES = (".png", ".svg", ".html")


def bench_chart(report: dict[str, Any]) -> Chart:
    """p50 and p99 latency against throughput, one point per load level."""
    levels = sorted(report["levels"], key=lambda level: level["throughput_infer_s"])
    labels = tuple(
        f"c={lv['concurrency']:g}" if "concurrency" in lv else f"{lv['request_rate']:g}/s"
        for lv in levels
    )
    series = tuple(
        Series(
            f"{percentile} latency",
            tuple((lv["throughput_infer_s"], lv["latency_ms"][percentile]) for lv in levels),
            color,
            labels=labels if percentile == "p99" else (),
        )
        for percentile, color in (("p50", PALETTE[0]), ("p99", PALETTE[1]))
    )
    return Chart(
        f"{report['model']}: latency vs throughput ({report['protocol']}, batch "
        f"{report['batch_size']})",
        "throughput (inferences/s)",
        "latency (ms)",
        series,
    )


def sweep_chart(result: dict[str, Any]) -> Chart:
    """p99 against throughput, one line per config; the budget as a guide."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for point in result["points"]:
        by_config.setdefault(point["config"], []).append(point)
    series = tuple(
        Series(
            name,
            tuple((p["throughput_infer_s"], p["p99_ms"]) for p in points),
            PALETTE[index % len(PALETTE)],
            labels=tuple(f"c={p['concurrency']:g}" for p in points),
        )
        for index, (name, points) in enumerate(by_config.items())
    )
    budget = result.get("latency_budget_ms")
    return Chart(
        f"{result['model']}: serving configs",
        "throughput (inferences/s)",
        "p99 latency (ms)",
        series,
        ((budget, f"budget {budget:g} ms"),) if budget else (),
    )


def write_chart(chart: Chart, path: Path, table: str = "") -> None:
    """Write `chart` in the format the suffix names."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        path.write_bytes(png(chart))
    elif suffix == ".svg":
        path.write_text(svg(chart))
    elif suffix == ".html":
        path.write_text(html_page.page(chart.title, [svg(chart), table]))
    else:
        raise BenchError(f"--plot {path}: the file must end in {', '.join(SUFFIXES)}")


def write_bench_plot(report: dict[str, Any], path: Path) -> None:
    rows = [
        [
            level_name(level),
            f"{level['throughput_infer_s']:.1f}",
            *(f"{level['latency_ms'][p]:.2f}" for p in ("p50", "p90", "p95", "p99")),
            str(sum(level["errors"].values())),
        ]
        for level in report["levels"]
    ]
    headers = ["load", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors"]
    write_chart(bench_chart(report), path, html_page.table(headers, rows))
