"""export_report.json: provenance (versions, exporter, source), parity figures and timings."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from exporters.specs import IOSpec


def package_versions() -> dict[str, str | None]:
    """Versions of the libraries an export depends on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("ferry", "torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_report(
    *,
    source: str,
    source_kind: str,
    name: str,
    version: int,
    exporter: str,
    dynamo_error: str | None,
    opset: int,
    inputs: Sequence[IOSpec],
    outputs: Sequence[IOSpec],
    max_batch_size: int,
    parity: Mapping[str, Any],
    timings_s: Mapping[str, float],
    model_path: Path,
    weights: Path | None,
    example: Path | None,
    reference: str | None,
    init_args: Mapping[str, Any] | None = None,
    binding: Mapping[str, Any] | None = None,
    variable_dims: Mapping[str, list[int]] | None = None,
    generated_inputs: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report as a JSON-ready dict."""

    def spec_json(spec: IOSpec) -> dict[str, Any]:
        return {
            "name": spec.name,
            "datatype": spec.datatype,
            "dims": list(spec.config_dims),
            "dim_names": {str(axis): name for axis, name in spec.variable_axes.items()},
        }

    return {
        "format": 1,
        "model": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {
            "spec": source,
            "kind": source_kind,
            "weights": str(weights) if weights else None,
            "example": str(example) if example else None,
            "init_args": dict(init_args or {}),
        },
        "binding": dict(binding or {}),
        "exporter": exporter,
        "dynamo_error": dynamo_error,
        "opset": opset,
        "versions": package_versions(),
        "max_batch_size": max_batch_size,
        "inputs": [spec_json(s) for s in inputs],
        "outputs": [spec_json(s) for s in outputs],
        # variable dim -> the sizes parity checked it at
        "variable_dims": dict(variable_dims or {}),
        # how parity drew each integer input without --example (and why that range)
        "generated_inputs": dict(generated_inputs or {}),
        "notes": list(notes),
        "model_file": {
            "name": model_path.name,
            "bytes": model_path.stat().st_size,
            "sha256": sha256_of(model_path),
        },
        "parity": dict(parity),
        "reference": reference,
        "timings_s": {k: round(v, 4) for k, v in timings_s.items()},
    }


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write the report as indented JSON."""
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
