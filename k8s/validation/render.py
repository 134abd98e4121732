"""Rendering the kustomize overlays into objects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from .objects import Obj
from .paths import K8S, OVERLAYS
from .tools import kubectl


class RenderError(Exception):
    """`kubectl kustomize` failed; the message names the overlay and kustomize's reason."""


def render(overlay: Path) -> list[Obj]:
    """`kubectl kustomize OVERLAY` parsed into objects."""
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True)
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
