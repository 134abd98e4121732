"""Checks against a running `ferry serve`: probe and scrape paths, HPA metric sources."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from .adapter import adapter_metric_sources, adapter_rules, hpa_pods_metrics
from .objects import FerryContainer, Obj, ferry_containers, name
from .paths import K8S
from .serve_args import parse_serve_args


def exported_metric_names(metrics_text: str) -> set[str]:
    """Metric names in a Prometheus exposition (samples and # TYPE lines)."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics_text, re.M))
    names |= set(re.findall(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics_text, re.M))
    return names


def _status(url: str) -> int:
    """The HTTP status of GET url; ConnectionError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{url}: {error}") from None


def _check_probes(f: FerryContainer, base_urls: dict[str, str]) -> list[str]:
    """Every httpGet probe answers 200 on the ferry listener its port reaches."""
    problems: list[str] = []
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = f.container.get(probe_name, {}).get("httpGet")
        if not get:
            continue
        role = f.role(get.get("port"))
        if role not in base_urls:
            problems.append(
                f"{f.where}: {probe_name} port {get.get('port')!r} reaches no ferry HTTP listener"
            )
            continue
        status = _status(base_urls[role] + get["path"])
        if status != 200:
            problems.append(
                f"{f.where}: {probe_name} path {get['path']} answered "
                f"{status} from ferry serve ({role} port)"
            )
    return problems


def _scrape_endpoints(obj: Obj, objs: list[Obj]) -> list[tuple[object, str]]:
    """(container port, path) that a ServiceMonitor or PodMonitor scrapes."""
    endpoints = []
    if obj.get("kind") == "ServiceMonitor":
        services = [s for s in objs if s.get("kind") == "Service"]
        for ep in obj["spec"]["endpoints"]:
            for svc in services:
                for p in svc["spec"]["ports"]:
                    if p.get("name") == ep.get("port"):
                        endpoints.append((p.get("targetPort"), ep.get("path", "/metrics")))
    elif obj.get("kind") == "PodMonitor":
        endpoints = [
            (ep.get("port"), ep.get("path", "/metrics"))
            for ep in obj["spec"]["podMetricsEndpoints"]
        ]
    return endpoints


def _check_hpa_metrics(
    overlay: str, objs: list[Obj], adapter: dict[str, Obj], exported: set[str]
) -> list[str]:
    """Every HPA Pods metric comes from a per-pod adapter rule over series ferry exports."""
    problems: list[str] = []
    for hpa in (o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"):
        for metric in hpa_pods_metrics(hpa):
            rule = adapter.get(metric)
            if rule is None:
                problems.append(
                    f"{overlay}: {name(hpa)} metric {metric!r}: no rule in "
                    "k8s/prometheus-adapter/values.yaml produces it"
                )
                continue
            if "<<.LabelMatchers>>" not in rule["metricsQuery"]:
                problems.append(
                    f"{overlay}: adapter rule for {metric!r} lacks "
                    "<<.LabelMatchers>> (it would not be per pod)"
                )
            missing = [m for m in adapter_metric_sources(rule) if m not in exported]
            if missing:
                problems.append(
                    f"{overlay}: {name(hpa)} metric {metric!r} reads {missing}, "
                    "which ferry serve does not export on /metrics"
                )
    return problems


def check_live(
    rendered: dict[str, list[Obj]], base_urls: dict[str, str], metrics_text: str, k8s: Path = K8S
) -> list[str]:
    """Against a running `ferry serve`: every probe and scrape path answers 200 on the listener
    its port maps to, and every HPA Pods metric comes from an adapter rule reading series that
    ferry exports. base_urls: {'http': 'http://127.0.0.1:PORT', 'metrics': ...}."""
    problems: list[str] = []
    exported = exported_metric_names(metrics_text)
    for overlay, objs in rendered.items():
        ferries = ferry_containers(overlay, objs)
        for f in ferries:
            try:
                f.params = parse_serve_args(f.container.get("args", []))
            except ValueError as error:
                problems.append(f"{f.where}: {error}")
                continue
            problems += _check_probes(f, base_urls)
        for obj in objs:
            for port, path in _scrape_endpoints(obj, objs):
                roles = {role for f in ferries if (role := f.role(port)) is not None}
                for role in roles & set(base_urls):
                    status = _status(base_urls[role] + path)
                    if status != 200:
                        problems.append(
                            f"{overlay}: {name(obj)} scrape path {path} answered "
                            f"{status} from ferry serve ({role} port)"
                        )
        problems += _check_hpa_metrics(overlay, objs, adapter_rules(k8s), exported)
    return problems
