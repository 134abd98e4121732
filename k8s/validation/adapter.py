"""prometheus-adapter rules: which HPA metric each rule produces and which series it reads."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .objects import Obj
from .paths import K8S


def adapter_rules(k8s: Path = K8S) -> dict[str, Obj]:
    """HPA metric name -> the prometheus-adapter rule that produces it."""
    values = yaml.safe_load((k8s / "prometheus-adapter" / "values.yaml").read_text())
    rules: dict[str, Obj] = {}
    for rule in values.get("rules", {}).get("custom", []):
        series = _selector_names(rule["seriesQuery"])
        name = rule.get("name", {})
        as_name = name.get("as") or (series[0] if series else "")
        if series and name.get("matches"):
            as_name = re.sub(name["matches"], name.get("as", "") or r"\g<0>", series[0])
        rules[as_name] = rule
    return rules


def _selector_names(promql: str) -> list[str]:
    """Metric names used as selectors (`name{...}` or a bare leading name) in a query."""
    names = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", promql)
    if not names and re.fullmatch(r"\s*[a-zA-Z_:][a-zA-Z0-9_:]*\s*", promql):
        names = [promql.strip()]
    return names


def adapter_metric_sources(rule: Obj) -> list[str]:
    """The series a rule reads, from its seriesQuery and metricsQuery."""
    return sorted(set(_selector_names(rule["seriesQuery"]) + _selector_names(rule["metricsQuery"])))


def hpa_pods_metrics(hpa: Obj) -> list[str]:
    """Names of the Pods-type metrics an HPA scales on."""
    return [
        metric["pods"]["metric"]["name"]
        for metric in hpa["spec"].get("metrics", [])
        if metric.get("type") == "Pods"
    ]
