"""`ferry bench --sweep` on the example encoder: the config it picks, served, meets its budget.

The encoder (examples/encoder.py, untrained weights: speed does not depend on them) is exported
with the real `ferry export`; the sweep serves two configs (1 and 2 instances) with ferry serve,
writes the pick to config.pbtxt (--apply), and a fresh `ferry serve` of that repository is then
measured at the picked concurrency with `ferry bench`: its p99 is within the budget. The budget is
generous (the machine is shared); what is checked is that the pick is the budget-meeting config
at the highest throughput and that it holds when served on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.repository_format import read_config
from tests.integration.measure.test_bench import QUICK, ferry_bench
from tests.support.chromium import chromium_binary, render
from tests.support.server_process import running_server

pytestmark = pytest.mark.slow

BUDGET_MS = 1000.0
CHECKS = 3  # a shared machine stalls now and then: the served config must meet it in one of these


def test_sweep_picks_a_config_that_meets_its_budget(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "export",
            "examples.encoder:EncoderClassifier",
            "--name",
            "encoder",
            "--model-repository",
            str(repo),
            "--input",
            "tokens:INT64:64",
            "--max-batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stdout + export.stderr
    original = read_config(repo / "encoder")
    assert original is not None
    report, plot = tmp_path / "sweep.json", tmp_path / "sweep.html"
    result = ferry_bench(
        "encoder",
        "--sweep",
        "--model-repository",
        str(repo),
        "--instance-counts",
        "1,2",
        "--preferred-batch-sizes",
        "none",
        "--queue-delays-us",
        "0",
        "--concurrency",
        "1,4",
        *QUICK,
        "--latency-budget-ms",
        str(BUDGET_MS),
        "--apply",
        "--report",
        str(report),
        "--plot",
        str(plot),
    )
    sweep = json.loads(report.read_text())
    assert [c["config"] for c in sweep["candidates"]] == [
        "instances=1 preferred=- delay=0us",
        "instances=2 preferred=- delay=0us",
    ]
    assert len(sweep["points"]) == 4 and sweep["frontier"]
    best = sweep["best"]
    assert best is not None and best["p99_ms"] <= BUDGET_MS and best["errors"] == 0
    within = [p for p in sweep["points"] if p["p99_ms"] <= BUDGET_MS and not p["errors"]]
    assert best["throughput_infer_s"] == max(p["throughput_infer_s"] for p in within)
    assert f"best: {best['config']}" in " ".join(result.stdout.split())
    # --apply wrote the pick; the rest of the config is the original's
    applied = read_config(repo / "encoder")
    assert applied is not None and sweep["applied"] == str(repo / "encoder" / "config.pbtxt")
    expected_count = int(best["config"].split()[0].split("=")[1])
    assert [g.count for g in applied.instance_group] == [expected_count]
    assert applied.max_batch_size == original.max_batch_size
    assert [i.name for i in applied.input] == [i.name for i in original.input]
    # served on its own, the picked config meets the budget at the picked concurrency
    with running_server(repo, "--no-drift") as server:
        p99s = []
        for attempt in range(CHECKS):
            check = tmp_path / f"check{attempt}.json"
            ferry_bench(
                "encoder",
                "--url",
                server.http_url,
                "--concurrency",
                f"{best['concurrency']:g}",
                "--duration",
                "3",
                "--warmup",
                "0.5",
                "--max-trials",
                "3",
                "--report",
                str(check),
            )
            level = json.loads(check.read_text())["levels"][0]
            assert not level["errors"]
            p99s.append(level["latency_ms"]["p99"])
            if p99s[-1] <= BUDGET_MS:
                break
        assert min(p99s) <= BUDGET_MS, p99s
    if chromium_binary() is not None:
        layout = render(plot, tmp_path, tmp_path / "sweep.png")
        assert len(layout["points"]) == 4 and len(layout["rows"]) == 4
