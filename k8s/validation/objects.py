"""Rendered objects: names, pod specs, image references and the containers that run ferry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


def name(obj: Obj) -> str:
    """`Kind/name` of an object, as problems name it."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec a Deployment templates or a ServingRuntime is; None for other kinds."""
    spec: Obj = obj.get("spec", {})
    if obj.get("kind") == "Deployment":
        pod: Obj = spec["template"]["spec"]
        return pod
    return spec if obj.get("kind") == "ServingRuntime" else None


def image_ref(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference, without registry path or digest."""
    name, _, tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")
    return name, tag


@dataclass
class FerryContainer:
    """A container that runs the ferry image, where it lives, and its parsed serve flags."""

    where: str  # "cpu: Deployment/ferry container ferry"
    container: Obj
    pod_spec: Obj  # volumes, securityContext, terminationGracePeriodSeconds
    pod_labels: dict[str, str]
    kserve: bool
    params: dict[str, Any] | None = None

    def port_number(self, port: Any) -> int | None:
        """The container port a probe or scrape names (by number or by port name)."""
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


def ferry_containers(overlay: str, objs: list[Obj]) -> list[FerryContainer]:
    """The containers of Deployments and ServingRuntimes that run the ferry image."""
    found: list[FerryContainer] = []
    for obj in objs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        kserve = obj.get("kind") == "ServingRuntime"
        labels = {} if kserve else obj["spec"]["template"].get("metadata", {}).get("labels", {})
        for c in pod.get("containers", []):
            if image_ref(c.get("image", ""))[0] == "ferry":
                found.append(
                    FerryContainer(
                        f"{overlay}: {name(obj)} container {c['name']}", c, pod, labels, kserve
                    )
                )
    return found


def iter_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj, str]]:
    """(object, container, 'initContainer' or 'container') for every pod-bearing object."""
    for obj in objs:
        pod = pod_spec(obj)
        if pod is None:
            continue
        if obj.get("kind") == "Deployment":
            for c in pod.get("initContainers", []):
                yield obj, c, "initContainer"
        for c in pod.get("containers", []):
            yield obj, c, "container"
