"""Checks on the containers that run ferry: args, ports, probes, storage, drain, flavour."""

from __future__ import annotations

from pathlib import Path

from .objects import FerryContainer, Obj, ferry_containers, image_ref
from .paths import LIVE, READY
from .render import render
from .secure_api import check_secure_api
from .serve_args import parse_serve_args


def _check_ports(f: FerryContainer) -> list[str]:
    """Named container ports match ferry's listeners (KServe: HTTP on 8080, first)."""
    problems: list[str] = []
    c, params = f.container, f.params or {}
    ports = {p.get("name"): int(p["containerPort"]) for p in c.get("ports", [])}
    wanted = {"http": "http1"} if f.kserve else {}  # KServe's name for the HTTP port
    for role in ("http", "grpc", "metrics"):
        number = params[f"{role}_port"]
        port_name = wanted.get(role, role)
        if f.kserve and role == "http":
            first = c.get("ports", [{}])[0]
            if first.get("containerPort") != number or number != 8080:
                problems.append(
                    f"{f.where}: KServe needs the HTTP port 8080 first in "
                    f"ports, got {c.get('ports')}"
                )
        if ports.get(port_name) != number:
            problems.append(
                f"{f.where}: container port {port_name!r} should be {number} "
                f"(ferry's --{role}-port), found {ports.get(port_name)}"
            )
    return problems


def _check_probes(f: FerryContainer) -> list[str]:
    """Startup/readiness/liveness probes GET ferry's health paths on its HTTP port."""
    problems: list[str] = []
    probes = {"startupProbe": READY, "readinessProbe": READY, "livenessProbe": LIVE}
    for probe_name, path in probes.items():
        probe = f.container.get(probe_name)
        if f.kserve and probe_name == "startupProbe" and probe is None:
            continue  # KServe's own readiness gates traffic; startup is optional there
        if probe is None:
            problems.append(f"{f.where}: no {probe_name}")
            continue
        get = probe.get("httpGet", {})
        if get.get("path") != path:
            problems.append(f"{f.where}: {probe_name} path {get.get('path')!r} should be {path!r}")
        if f.port_number(get.get("port")) is None:
            problems.append(
                f"{f.where}: {probe_name} port {get.get('port')!r} is not a container port"
            )
        elif f.role(get.get("port")) != "http":
            problems.append(
                f"{f.where}: {probe_name} port {get.get('port')!r} is not ferry's HTTP port"
            )
    return problems


def _check_storage(f: FerryContainer) -> list[str]:
    """The model repository is mounted (KServe: /mnt/models), /tmp is writable, mounts exist."""
    problems: list[str] = []
    c = f.container
    repo_path = str((f.params or {})["model_repository"])
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if f.kserve:
        if repo_path != "/mnt/models":
            problems.append(
                f"{f.where}: KServe puts models in /mnt/models, ferry reads {repo_path}"
            )
    elif not any(repo_path == m or repo_path.startswith(m.rstrip("/") + "/") for m in mounts):
        problems.append(f"{f.where}: --model-repository {repo_path} is not a volumeMount")
    tmp = mounts.get("/tmp")
    if tmp is None or tmp.get("readOnly"):
        problems.append(f"{f.where}: read-only root filesystem needs a writable /tmp mount")
    volumes = {v["name"] for v in f.pod_spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            problems.append(f"{f.where}: volumeMount {m['name']!r} has no volume")
    return problems


def _check_drain(f: FerryContainer) -> list[str]:
    """SIGTERM drain: the grace period must outlast preStop + --exit-timeout-secs."""
    if f.kserve:
        return []
    exit_timeout = (f.params or {})["exit_timeout_secs"]
    grace = int(f.pod_spec.get("terminationGracePeriodSeconds", 30))
    pre = f.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if grace <= pre + exit_timeout:
        return [
            f"{f.where}: terminationGracePeriodSeconds {grace} <= preStop {pre}s + "
            f"--exit-timeout-secs {exit_timeout}"
        ]
    return []


def _check_flavour(f: FerryContainer, overlay: str, stages: set[str]) -> list[str]:
    """GPU limits go with the gpu image, and the image tag names a Dockerfile stage."""
    problems: list[str] = []
    c = f.container
    gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    requested = c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu")
    tag = image_ref(c["image"])[1]
    flavour = "gpu" if "gpu" in tag else "cpu" if "cpu" in tag else None
    if flavour is None or (stages and flavour not in stages):
        problems.append(f"{f.where}: image tag {tag!r} names no Dockerfile target (cpu or gpu)")
    if overlay == "gpu" or flavour == "gpu":
        if not gpus or int(gpus) < 1:
            problems.append(f"{f.where}: GPU image/overlay without an nvidia.com/gpu limit")
        if requested is not None and requested != gpus:
            problems.append(f"{f.where}: nvidia.com/gpu requests {requested} != limits {gpus}")
        tolerations = f.pod_spec.get("tolerations", [])
        if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
            problems.append(f"{f.where}: no toleration for nvidia.com/gpu taints")
        if flavour != "gpu":
            problems.append(f"{f.where}: GPU overlay runs image {c['image']} (needs :gpu)")
    elif gpus:
        problems.append(f"{f.where}: requests a GPU but runs the CPU image")
    return problems


def check_ferry_container(f: FerryContainer, overlay: str, stages: set[str]) -> list[str]:
    """One ferry container; sets f.params when its args parse as `ferry serve` flags."""
    c = f.container
    problems: list[str] = []
    if c.get("command") and c["command"][-2:] != ["ferry", "serve"]:
        problems.append(
            f"{f.where}: command {c['command']} overrides the image's `ferry serve` entrypoint"
        )
    try:
        f.params = parse_serve_args(c.get("args", []))
    except ValueError as error:
        return [
            *problems,
            f"{f.where}: args {c.get('args', [])} rejected by `ferry serve`: {error}",
        ]
    return (
        problems
        + _check_ports(f)
        + _check_probes(f)
        + _check_storage(f)
        + _check_drain(f)
        + _check_flavour(f, overlay, stages)
        + check_secure_api(f)
    )


def _startup_seconds(probe: Obj) -> int:
    """How long a probe tolerates failures: periodSeconds x failureThreshold."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def check_gpu_startup(overlay: str, ferries: list[FerryContainer], k8s: Path) -> list[str]:
    """GPU startup budget is longer than the CPU one (TensorRT engine builds)."""
    if overlay != "gpu":
        return []
    problems: list[str] = []
    cpu_rendered = render(k8s / "overlays" / "cpu") if (k8s / "overlays/cpu").exists() else []
    cpu_budget = [
        _startup_seconds(f.container.get("startupProbe", {}))
        for f in ferry_containers("cpu", cpu_rendered)
    ]
    for f in ferries:
        budget = _startup_seconds(f.container.get("startupProbe", {}))
        if cpu_budget and budget <= max(cpu_budget):
            problems.append(
                f"{f.where}: startupProbe budget {budget}s is not longer than "
                f"the CPU overlay's {max(cpu_budget)}s"
            )
    return problems
