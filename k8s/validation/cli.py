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
import re
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from .consistency import check_consistency
from .dockerfile import check_dockerfile
from .linters import hadolint, run_checkov, yamllint
from .live import check_live
from .monitoring_sync import check_monitoring_equal, sync_monitoring
from .objects import Obj
from .paths import DOCKERFILE, GENERATED, K8S, MONITORING
from .render import render_all
from .schemas import validate_schemas


def static_problems(
    k8s: Path = K8S, dockerfile: Path = DOCKERFILE, monitoring: Path = MONITORING
) -> tuple[dict[str, list[Obj]], list[str]]:
    """Every check that needs neither a server nor checkov, over every overlay."""
    problems = yamllint(k8s) + sync_monitoring(k8s, monitoring)
    rendered, render_problems = render_all(k8s)
    problems += render_problems
    for overlay, objs in rendered.items():
        problems += validate_schemas(objs, overlay, k8s)
        problems += check_consistency(overlay, objs, k8s, dockerfile)
        problems += check_monitoring_equal(overlay, objs, monitoring)
    problems += check_dockerfile(dockerfile, k8s) + hadolint(dockerfile)
    return rendered, problems


def _parser() -> argparse.ArgumentParser:
    """`validate.py sync` and `validate.py check [--checkov] [--server URL [--metrics URL]]`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="rewrite k8s/components/monitoring/generated/ from monitoring/")
    check = sub.add_parser("check", help="run the offline checks")
    check.add_argument("--checkov", action="store_true", help="also run checkov (slow)")
    check.add_argument("--server", help="HTTP base URL of a running ferry serve")
    check.add_argument("--metrics", help="its /metrics URL (with --server)")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    """Run `sync` or `check`; print each problem and return the exit status."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
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
