"""Per-overlay checks that need no server: hardening, ferry's containers, object references."""

from __future__ import annotations

from pathlib import Path

from .dockerfile import dockerfile_stages
from .ferry_checks import check_ferry_container, check_gpu_startup
from .objects import Obj, ferry_containers, image_ref, iter_containers, name, pod_spec
from .paths import DOCKERFILE, K8S
from .wiring import check_wiring


def check_containers(overlay: str, objs: list[Obj]) -> list[str]:
    """Every container: requests + limits, hardened securityContext, a pinned image."""
    problems: list[str] = []
    for obj, c, what in iter_containers(objs):
        where = f"{overlay}: {name(obj)} {what} {c.get('name')}"
        res = c.get("resources", {})
        for section in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(res.get(section, {}))
            if missing:
                problems.append(f"{where}: resources.{section} lacks {sorted(missing)}")
        sc = c.get("securityContext", {})
        pod_sc = (pod_spec(obj) or {}).get("securityContext", {})
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot is not set")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities.drop must contain ALL")
        image = c.get("image", "")
        if "@sha256:" not in image and image_ref(image)[1] in ("", "latest"):
            problems.append(f"{where}: image {image!r} needs a pinned tag (not latest)")
    return problems


def check_consistency(
    overlay: str, objs: list[Obj], k8s: Path = K8S, dockerfile: Path = DOCKERFILE
) -> list[str]:
    """Cross-object checks that need no server: selectors, ports, probes, security, CLI args."""
    stages = set(dockerfile_stages(dockerfile)) if dockerfile.exists() else set()
    problems = check_containers(overlay, objs)
    ferries = ferry_containers(overlay, objs)
    if not ferries:
        problems.append(f"{overlay}: no container runs the ferry image")
    for f in ferries:
        problems += check_ferry_container(f, overlay, stages)
    problems += check_gpu_startup(overlay, ferries, k8s)
    return problems + check_wiring(overlay, objs, ferries, k8s)
