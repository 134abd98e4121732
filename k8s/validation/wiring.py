"""Cross-object references: selectors, Service ports, monitors, KServe, HPA, policies, PDBs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .adapter import adapter_rules, hpa_pods_metrics
from .objects import FerryContainer, Obj, name


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A non-empty matchLabels selector matches these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class _Overlay:
    """One rendered overlay, indexed for the reference checks."""

    overlay: str
    objs: list[Obj]
    ferries: list[FerryContainer]

    def __post_init__(self) -> None:
        self.by_kind: dict[str, list[Obj]] = {}
        for obj in self.objs:
            self.by_kind.setdefault(obj.get("kind", ""), []).append(obj)
        self.deployments = {d["metadata"]["name"]: d for d in self.by_kind.get("Deployment", [])}
        self.pod_labels = {
            n: d["spec"]["template"]["metadata"].get("labels", {})
            for n, d in self.deployments.items()
        }
        self.container_ports = {
            n: {
                p.get("name")
                for c in d["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for n, d in self.deployments.items()
        }

    def kind(self, kind: str) -> list[Obj]:
        """The objects of one kind."""
        return self.by_kind.get(kind, [])


def _workloads(o: _Overlay) -> list[str]:
    """Deployment selectors match their pods; Services select pods and target named ports."""
    problems: list[str] = []
    for dep_name, d in o.deployments.items():
        if not _selects(d["spec"]["selector"].get("matchLabels", {}), o.pod_labels[dep_name]):
            problems.append(f"{o.overlay}: Deployment/{dep_name} selector does not match its pods")
    for svc in o.kind("Service"):
        sel = svc["spec"].get("selector", {})
        targets = [n for n, labels in o.pod_labels.items() if _selects(sel, labels)]
        if not targets:
            problems.append(f"{o.overlay}: {name(svc)} selector {sel} matches no Deployment's pods")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in o.container_ports[t] for t in targets):
                problems.append(
                    f"{o.overlay}: {name(svc)} targetPort {target!r} is not a container port name"
                )
    return problems


def _service_monitors(o: _Overlay) -> list[str]:
    """ServiceMonitors select a Service and scrape the port that reaches ferry's metrics."""
    problems: list[str] = []
    for sm in o.kind("ServiceMonitor"):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in o.kind("Service") if _selects(sel, s["metadata"].get("labels", {}))]
        if not matched:
            problems.append(f"{o.overlay}: {name(sm)} selects no Service (labels {sel})")
        for ep in sm["spec"].get("endpoints", []):
            for svc in matched:
                names = {p.get("name"): p for p in svc["spec"]["ports"]}
                if ep.get("port") not in names:
                    problems.append(
                        f"{o.overlay}: {name(sm)} endpoint port {ep.get('port')!r} "
                        f"is not a port name of {name(svc)} "
                        f"({sorted(n for n in names if n)})"
                    )
                    continue
                target = names[ep["port"]].get("targetPort")
                roles = {f.role(target) for f in o.ferries if not f.kserve}
                if roles != {"metrics"}:
                    problems.append(
                        f"{o.overlay}: {name(sm)} scrapes {name(svc)} port "
                        f"{ep['port']!r}, which is not ferry's metrics port"
                    )
    return problems


def _kserve(o: _Overlay) -> list[str]:
    """InferenceServices name a v2 ServingRuntime that supports their model format."""
    problems: list[str] = []
    runtimes = {r["metadata"]["name"]: r for r in o.kind("ServingRuntime")}
    for isvc in o.kind("InferenceService"):
        model = isvc["spec"]["predictor"].get("model", {})
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            problems.append(
                f"{o.overlay}: {name(isvc)} runtime {model.get('runtime')!r} is "
                f"not a ServingRuntime here ({sorted(runtimes)})"
            )
            continue
        if model.get("protocolVersion") != "v2" or "v2" not in runtime["spec"].get(
            "protocolVersions", []
        ):
            problems.append(
                f"{o.overlay}: {name(isvc)} must use protocolVersion v2 on a v2 runtime"
            )
        formats = {m["name"] for m in runtime["spec"].get("supportedModelFormats", [])}
        if model.get("modelFormat", {}).get("name") not in formats:
            problems.append(
                f"{o.overlay}: {name(isvc)} modelFormat "
                f"{model.get('modelFormat')} not supported by {name(runtime)}"
            )
        names = [c["name"] for c in runtime["spec"].get("containers", [])]
        if names[:1] != ["kserve-container"]:
            problems.append(
                f"{o.overlay}: {name(runtime)} first container must be named "
                f"kserve-container, got {names}"
            )
    return problems


def _pod_monitors(o: _Overlay) -> list[str]:
    """PodMonitors select ferry's pods (or KServe's) and scrape ferry's metrics port."""
    problems: list[str] = []
    isvc_pods = [
        {"serving.kserve.io/inferenceservice": i["metadata"]["name"]}
        for i in o.kind("InferenceService")
    ]
    for pm in o.kind("PodMonitor"):
        sel = pm["spec"]["selector"].get("matchLabels", {})
        if not any(_selects(sel, labels) for labels in [*o.pod_labels.values(), *isvc_pods]):
            problems.append(f"{o.overlay}: {name(pm)} selects no pods (labels {sel})")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            if not any(f.role(ep.get("port")) == "metrics" for f in o.ferries):
                problems.append(
                    f"{o.overlay}: {name(pm)} port {ep.get('port')!r} is not ferry's metrics port"
                )
    return problems


def _autoscaling(o: _Overlay, adapter: dict[str, Obj]) -> list[str]:
    """HPAs scale a Deployment here, keep two replicas under a PDB, and use adapter metrics."""
    problems: list[str] = []
    for hpa in o.kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in o.deployments:
            problems.append(
                f"{o.overlay}: {name(hpa)} scales {ref}, which is not a Deployment here"
            )
        if o.kind("PodDisruptionBudget") and hpa["spec"].get("minReplicas", 1) < 2:
            problems.append(
                f"{o.overlay}: {name(hpa)} minReplicas < 2 with a "
                "PodDisruptionBudget blocks node drains"
            )
        for metric in hpa_pods_metrics(hpa):
            if metric not in adapter:
                problems.append(
                    f"{o.overlay}: {name(hpa)} metric {metric!r} is produced by "
                    f"no rule in k8s/prometheus-adapter/values.yaml "
                    f"({sorted(adapter)})"
                )
    return problems


def _policies(o: _Overlay) -> list[str]:
    """NetworkPolicies and PDBs select pods; policy ports are container port names."""
    problems: list[str] = []
    for policy in o.kind("NetworkPolicy"):
        sel = policy["spec"]["podSelector"].get("matchLabels", {})
        selected = [n for n, labels in o.pod_labels.items() if _selects(sel, labels)]
        if not selected:
            problems.append(f"{o.overlay}: {name(policy)} podSelector {sel} matches no pods")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port.get("port"), str) and not any(
                    port["port"] in o.container_ports[n] for n in selected
                ):
                    problems.append(
                        f"{o.overlay}: {name(policy)} allows port "
                        f"{port['port']!r}, which is not a container port name"
                    )
    for pdb in o.kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(_selects(sel, labels) for labels in o.pod_labels.values()):
            problems.append(f"{o.overlay}: {name(pdb)} selector {sel} matches no pods")
    return problems


def check_wiring(
    overlay: str, objs: list[Obj], ferries: list[FerryContainer], k8s: Path
) -> list[str]:
    """Objects reference each other correctly and share one namespace."""
    o = _Overlay(overlay, objs, ferries)
    problems = _workloads(o) + _service_monitors(o) + _kserve(o) + _pod_monitors(o)
    problems += _autoscaling(o, adapter_rules(k8s)) + _policies(o)
    namespaces = {
        obj["metadata"].get("namespace") for obj in objs if obj.get("kind") not in ("Namespace",)
    }
    if len(namespaces) != 1 or None in namespaces:
        problems.append(f"{overlay}: objects span namespaces {namespaces}")
    return problems
