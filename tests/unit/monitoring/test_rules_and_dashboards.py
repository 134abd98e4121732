"""Alert rules pass promtool (check + unit tests); the dashboard follows the conventions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = sorted((ROOT / "monitoring" / "alerts").glob("*.yaml"))
RULE_TESTS = Path(__file__).with_name("ferry.rules.test.yaml")
DASHBOARDS = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make system-deps)"
)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_metadata_and_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases: dict[str, set[bool]] = {}
    for group in tests:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    alerts = [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert len(alerts) >= 6
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert cases.get(rule["alert"]) == {True, False}, rule["alert"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_conventions(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model", "version", "pod"} <= variables
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            expr = target["expr"]
            assert "rate(" not in expr or "$__rate_interval" in expr or "[1h]" in expr, expr
            if "model=~" in expr or "nv_inference" in expr or "ferry_" in expr:
                assert 'model=~"$model"' in expr and 'pod=~"$pod"' in expr, expr


def test_dashboard_only_queries_metrics_ferry_exports() -> None:
    from monitoring.drift import DRIFT_FAMILIES

    known = set(DRIFT_FAMILIES) | {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_pending_request_count",
        "nv_model_load_duration_secs",
        "ferry_model_ready",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    }
    known |= {
        f"{h}_{s}"
        for h in (
            "ferry_request_duration_seconds",
            "ferry_queue_duration_seconds",
            "ferry_compute_duration_seconds",
            "ferry_batch_size",
        )
        for s in ("bucket", "sum", "count")
    }
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                names = set(re.findall(r"\b((?:nv|ferry|process)_[a-z_]+)\b", target["expr"]))
                assert names <= known, names - known
