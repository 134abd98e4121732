"""`ferry optimize` always writes optimize_report.json and .html; the HTML renders in Chromium.

Unpublished runs write into the report folder the command names; published runs into the new
version. The HTML page is loaded in headless Chromium: the chart has a point for every
benchmarked row and the table a laid-out row for every candidate (screenshot in tmp_path).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_optimize import ferry_optimize
from tests.support.chromium import chromium_binary, render
from tests.unit.optimizers.models import Example, write_example

pytestmark = pytest.mark.slow


def run_optimize(example: Example, *args: str) -> subprocess.CompletedProcess[str]:
    result = ferry_optimize(example, example.name, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_reports_are_written_published_or_not_and_render(tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")
    example = write_example(tmp_path)
    common = (
        "--variants",
        "ort-fp32,int8-dynamic,int8-static",
        "--bench-seconds",
        "1",
    )
    # nothing published: the report goes to the folder the command names
    unpublished = run_optimize(example, *common, "--no-publish")
    named = re.search(r"report: (\S+)/optimize_report\.json", unpublished.stdout)
    assert named is not None, unpublished.stdout
    folder = Path(named.group(1))
    assert folder.parent == example.model_dir / "optimize_reports"
    report = json.loads((folder / "optimize_report.json").read_text())
    assert report["published"] is None
    # the terminal table says at which batch size each figure was measured, and the spread
    assert "p50 ms @b1" in unpublished.stdout and "throughput/s @b8" in unpublished.stdout
    assert "spread" in unpublished.stdout
    for row in [report["reference"], *report["candidates"]]:
        if "throughput" in row:
            assert row["throughput_batch"] == 8 and row["latency_batch"] == 1
            assert row["throughput_spread"] >= 0

    # published (min-gain 0 forces it): both files in the new version's folder
    published = run_optimize(example, *common, "--min-gain", "0", "--max-drop", "1")
    version_dir = example.model_dir / "2"
    assert f"report: {version_dir}/optimize_report.json" in published.stdout
    published_report = json.loads((version_dir / "optimize_report.json").read_text())
    assert published_report["published"]["version"] == 2
    html = version_dir / "optimize_report.html"
    text = html.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text

    layout = render(html, tmp_path, tmp_path / "optimize_report.png")
    assert layout["svg"]["width"] > 300 and layout["svg"]["height"] > 200
    plotted = [
        row["variant"]
        for row in [published_report["reference"], *published_report["candidates"]]
        if row.get("throughput") is not None and row.get("value") is not None
    ]
    assert len(layout["points"]) == len(plotted) >= 2
    for point in layout["points"]:
        assert point["width"] > 0 and point["height"] > 0
        assert 0 <= point["x"] <= layout["svg"]["x"] + layout["svg"]["width"]
    rows = layout["rows"]
    expected = ["fp32", *(c["variant"] for c in published_report["candidates"])]
    assert [row["cells"][0] for row in rows] == expected
    for row in rows:
        assert row["height"] > 0 and row["width"] > 0
    assert (tmp_path / "optimize_report.png").read_bytes().startswith(b"\x89PNG")
