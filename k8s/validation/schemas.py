"""Schema validation: built-in kinds with kubernetes-validate, CRDs with k8s/schemas/."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .objects import Obj, name
from .paths import CRD_KINDS, K8S, K8S_VERSIONS


def _path(parts: Iterable[Any]) -> str:
    """A JSON path for a problem message; '/' for the document itself."""
    return "/".join(str(p) for p in parts) or "/"


def _pod_of(containers: list[Obj], extra: Obj | None = None) -> Obj:
    """A v1 Pod around containers embedded in a CRD, so they validate strictly."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "embedded"},
        "spec": {"containers": containers, **(extra or {})},
    }


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
                problems.append(
                    f"{overlay}: {what} invalid for Kubernetes {version} at "
                    f"{_path(error.path)}: {error.message}"
                )
                return

    for obj in objs:
        kind = obj.get("kind", "")
        if kind in CRD_KINDS:
            schema = json.loads((k8s / "schemas" / f"{kind.lower()}.json").read_text())
            for error in jsonschema.Draft202012Validator(schema).iter_errors(obj):
                problems.append(
                    f"{overlay}: {name(obj)} does not match "
                    f"k8s/schemas/{kind.lower()}.json at "
                    f"{_path(error.absolute_path)}: {error.message}"
                )
            spec = obj.get("spec", {})
            if kind == "ServingRuntime":
                builtin(
                    _pod_of(spec.get("containers", []), {"volumes": spec.get("volumes", [])}),
                    f"{name(obj)} containers (as a v1 Pod)",
                )
            if kind == "InferenceService" and spec.get("predictor", {}).get("containers"):
                builtin(
                    _pod_of(spec["predictor"]["containers"]),
                    f"{name(obj)} predictor containers (as a v1 Pod)",
                )
            continue
        try:
            kv.validate(obj, K8S_VERSIONS[0], strict=True)
        except kv.SchemaNotFoundError:
            problems.append(
                f"{overlay}: {name(obj)}: no schema for {obj.get('apiVersion')} "
                f"{kind} (neither built in nor in k8s/schemas/)"
            )
            continue
        except kv.ValidationError:
            pass
        builtin(obj, name(obj))
    return problems
