"""Third-party linters over k8s/, the Dockerfile and the rendered overlays."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import yaml

from .objects import Obj
from .paths import DOCKERFILE, K8S
from .tools import checkov, console_script


def yamllint(k8s: Path = K8S) -> list[str]:
    """yamllint over k8s/ with its .yamllint.yaml."""
    result = subprocess.run(
        [console_script("yamllint"), "-f", "parsable", "-c", ".yamllint.yaml", "."],
        capture_output=True,
        text=True,
        cwd=k8s,
    )
    return [] if result.returncode == 0 else [f"yamllint: {result.stdout}{result.stderr}"]


def hadolint(path: Path = DOCKERFILE) -> list[str]:
    """hadolint on the Dockerfile, failing on warnings."""
    result = subprocess.run(
        [console_script("hadolint"), "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
    )
    return (
        [] if result.returncode == 0 else [f"hadolint {path.name}: {result.stdout}{result.stderr}"]
    )


def run_checkov(rendered: dict[str, list[Obj]], dockerfile: Path = DOCKERFILE) -> list[str]:
    """checkov on the rendered overlays and on the Dockerfile (skips are justified inline)."""
    exe = checkov()
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for overlay, objs in rendered.items():
            (Path(tmp) / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objs))
        runs = [
            (["-d", tmp, "--framework", "kubernetes"], "rendered manifests"),
            (["-f", str(dockerfile), "--framework", "dockerfile"], dockerfile.name),
        ]
        for argv, what in runs:
            result = subprocess.run(
                [exe, *argv, "--skip-download", "--compact", "--quiet"],
                capture_output=True,
                text=True,
            )
            # checkov exits 0 when it crashes on an input, so a traceback is a failure too.
            if result.returncode != 0 or "Traceback" in result.stdout + result.stderr:
                problems.append(
                    f"checkov on {what}:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
                )
    return problems
