"""optimize_report.html: every candidate as a table row and an accuracy-vs-throughput chart.

One self-contained file (inline CSS and SVG; no script, font or network), written beside
optimize_report.json: in the published version's folder, or in the report folder when nothing
is published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from measure import html_page
from measure.charts import PALETTE, Chart, Series, svg
from optimizers.accuracy import LOWER_IS_BETTER
from server.repository_format import OPTIMIZE_REPORT_FILENAME

OPTIMIZE_REPORT_HTML = "optimize_report.html"
COLUMNS = (
    "variant",
    "precision",
    "metric",
    "delta",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "throughput/s",
    "spread",
    "speedup",
    "verdict",
)


def _number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The FP32 reference and every candidate, in the report's order."""
    reference = report.get("reference")
    return [*([reference] if reference else []), *report.get("candidates", [])]


def chart(report: dict[str, Any]) -> Chart:
    """Metric value against throughput: FP32, published, passed and failed candidates."""
    groups: dict[str, list[dict[str, Any]]] = {
        "fp32": [],
        "published": [],
        "passed": [],
        "failed": [],
    }
    published = (report.get("published") or {}).get("variant") or report.get("would_publish")
    for row in rows(report):
        if row.get("throughput") is None or row.get("value") is None:
            continue
        if row["variant"] == "fp32":
            groups["fp32"].append(row)
        elif row["variant"] == published:
            groups["published"].append(row)
        else:
            groups["passed" if row.get("passed") else "failed"].append(row)
    colors = {
        "fp32": PALETTE[0],
        "published": PALETTE[2],
        "passed": PALETTE[3],
        "failed": PALETTE[1],
    }
    series = tuple(
        Series(
            name,
            tuple((float(r["throughput"]), float(r["value"])) for r in members),
            colors[name],
            line=False,
            labels=tuple(str(r["variant"]) for r in members),
        )
        for name, members in groups.items()
        if members
    )
    metric = str(report.get("metric", "metric"))
    reference = report.get("reference") or {}
    guides: tuple[tuple[float, str], ...] = ()
    if reference.get("value") is not None and report.get("max_drop") is not None:
        direction = 1 if metric in LOWER_IS_BETTER else -1
        threshold = reference["value"] + direction * report["max_drop"]
        guides = ((threshold, f"gate: {metric} {threshold:.4g}"),)
    batch = reference.get("throughput_batch", "?")
    return Chart(
        f"{report.get('model', '')}: {metric} vs throughput",
        f"throughput (samples/s at batch {batch})",
        metric,
        series,
        guides,
    )


def render(report: dict[str, Any]) -> str:
    """The whole HTML page."""
    reference = report.get("reference") or {}
    latency_batch = reference.get("latency_batch", 1)
    throughput_batch = reference.get("throughput_batch", "?")
    published = report.get("published")
    table_rows, classes = [], []
    for row in rows(report):
        verdict = row.get("reason") or ("passed" if row.get("passed") else "failed")
        table_rows.append(
            [
                str(row["variant"]),
                str(row.get("precision", "")),
                _number(row.get("value"), 4),
                _number(row.get("delta"), 4),
                _number(row.get("p50_ms"), 2),
                _number(row.get("p95_ms"), 2),
                _number(row.get("p99_ms"), 2),
                _number(row.get("throughput"), 1),
                "-" if row.get("throughput_spread") is None else f"±{row['throughput_spread']:.1%}",
                _number(row.get("speedup"), 2),
                str(verdict),
            ]
        )
        css = "passed" if row.get("passed") else "failed"
        if published and row["variant"] == published.get("variant"):
            css += " published"
        classes.append(css)
    outcome = (
        f"published {published['variant']} as version {published['version']}"
        if published
        else "nothing published"
        + (f" (would publish {report['would_publish']})" if report.get("would_publish") else "")
    )
    headers = [
        f"{c} (batch {latency_batch})"
        if c.endswith(" ms")
        else f"{c} (batch {throughput_batch})"
        if c == "throughput/s"
        else c
        for c in COLUMNS
    ]
    summary = (
        f"{outcome}. Target {report.get('target')}, objective {report.get('objective')}, "
        f"metric {report.get('metric')} on {report.get('eval_samples')} samples, max drop "
        f"{report.get('max_drop')}. Latencies are measured at batch {latency_batch}, throughput "
        f"at batch {throughput_batch}; spread is the run-to-run spread of throughput (half the "
        "10-90 % range of the interleaved blocks), and a published speed-up must exceed it. "
        "Variants that failed the accuracy gate or were not benchmarked have no point."
    )
    fingerprint = json.dumps(report.get("fingerprint", {}), sort_keys=True)
    return html_page.page(
        f"ferry optimize {report.get('model', '')}",
        [
            html_page.note(summary),
            f'<div id="chart">{svg(chart(report))}</div>',
            "<h2>Candidates</h2>",
            html_page.table(
                headers, table_rows, classes, text_columns=(0, 1, 10), table_id="candidates"
            ),
            "<h2>Machine</h2>",
            html_page.note(fingerprint),
        ],
    )


def write_reports(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """optimize_report.json and optimize_report.html in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / OPTIMIZE_REPORT_FILENAME
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path = folder / OPTIMIZE_REPORT_HTML
    html_path.write_text(render(report))
    return json_path, html_path
