"""Offline checks for ferry's Dockerfile and Kubernetes manifests: `python k8s/validate.py
sync|check` (see --help). The checks live in k8s/validation/; this re-exports them for the tests."""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path, not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from validation.adapter import adapter_metric_sources, adapter_rules
from validation.cli import main, static_problems
from validation.consistency import check_consistency
from validation.dockerfile import (
    Stage,
    check_dockerfile,
    dockerfile_args,
    dockerfile_stages,
    exec_form,
    healthcheck_command,
)
from validation.linters import hadolint, run_checkov, yamllint
from validation.live import check_live, exported_metric_names
from validation.monitoring_sync import (
    check_monitoring_equal,
    generated_monitoring,
    sync_monitoring,
)
from validation.objects import FerryContainer, Obj, ferry_containers
from validation.paths import (
    CHECKOV,
    CRD_KINDS,
    DOCKERFILE,
    GENERATED,
    K8S,
    K8S_VERSIONS,
    KUBECTL_NPM,
    LIVE,
    MONITORING,
    MONITORING_LABELS,
    OVERLAYS,
    READY,
    REPO,
    TOOLS,
)
from validation.render import RenderError, render, render_all
from validation.schemas import validate_schemas
from validation.serve_args import parse_serve_args
from validation.tools import checkov, kubectl

__all__ = [
    "CHECKOV",
    "CRD_KINDS",
    "DOCKERFILE",
    "GENERATED",
    "K8S",
    "K8S_VERSIONS",
    "KUBECTL_NPM",
    "LIVE",
    "MONITORING",
    "MONITORING_LABELS",
    "OVERLAYS",
    "READY",
    "REPO",
    "TOOLS",
    "FerryContainer",
    "Obj",
    "RenderError",
    "Stage",
    "adapter_metric_sources",
    "adapter_rules",
    "check_consistency",
    "check_dockerfile",
    "check_live",
    "check_monitoring_equal",
    "checkov",
    "dockerfile_args",
    "dockerfile_stages",
    "exec_form",
    "exported_metric_names",
    "ferry_containers",
    "generated_monitoring",
    "hadolint",
    "healthcheck_command",
    "kubectl",
    "main",
    "parse_serve_args",
    "render",
    "render_all",
    "run_checkov",
    "static_problems",
    "sync_monitoring",
    "validate_schemas",
    "yamllint",
]

if __name__ == "__main__":
    sys.exit(main())
