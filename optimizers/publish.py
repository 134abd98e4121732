"""Publish the winner atomically as the model's next version; the FP32 version stays on disk.

The version folder is assembled under a hidden staging name (Triton and ferry ignore
non-numeric folders) and renamed into place, so a polling server never sees half a version.

Triton keeps ONE config.pbtxt per model for all versions, so:
- an ONNX winner (graph-optimized, INT8, FP16) keeps platform onnxruntime_onnx: only the new
  folder appears, and the default version policy (latest 1) moves serving to it;
- the ORT TensorRT-EP winner adds Triton's `gpu_execution_accelerator { name: "tensorrt" }`;
- a TensorRT winner switches the model to platform tensorrt_plan with default_model_filename
  model.plan and pins `version_policy { specific { versions: [N] } }`, because the older ONNX
  versions cannot load under that platform. The config is first pinned to the versions being
  served, then the folder is renamed in, then the final config is written: each step is atomic
  and the server never tries to load the plan as ONNX. The previous config text is kept in
  optimize_report.json (`previous_config`) for a rollback.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from optimizers.report_html import write_reports
from optimizers.source import SourceModel
from optimizers.variants import Artifact
from server.repository_format import (
    EXPORT_REPORT_FILENAME,
    KIND_GPU,
    REFERENCE_FILENAME,
    TENSORRT_PLATFORM,
    ModelConfig,
    format_config,
    next_version,
    read_config,
    version_numbers,
    write_config,
)


def served_versions(config: ModelConfig, versions: list[int]) -> list[int]:
    """The versions a config's version policy loads (Triton's default: latest 1)."""
    policy = config.version_policy
    if policy.HasField("all"):
        return versions
    if policy.HasField("specific"):
        return [v for v in versions if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if policy.HasField("latest") else 1
    return versions[-max(1, count) :]


def final_config(source: SourceModel, artifact: Artifact, version: int) -> ModelConfig | None:
    """The config.pbtxt after publishing, or None when it stays as it is."""
    if artifact.platform != TENSORRT_PLATFORM and artifact.accelerator is None:
        return None
    config = ModelConfig()
    config.CopyFrom(source.config)
    if artifact.platform == TENSORRT_PLATFORM:
        config.platform, config.default_model_filename = TENSORRT_PLATFORM, "model.plan"
        config.ClearField("backend")
        config.ClearField("optimization")
        config.version_policy.specific.ClearField("versions")
        config.version_policy.specific.versions.append(version)
        for group in config.instance_group:
            group.kind = KIND_GPU
        return config
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    del accelerators[:]
    accelerator = accelerators.add()
    accelerator.name = "tensorrt"
    for key, value in (artifact.accelerator or {}).items():
        accelerator.parameters[key] = value
    return config


def publish(source: SourceModel, artifact: Artifact, report: dict[str, Any]) -> int:
    """Copy the winner (+ sidecars + report) into REPO/NAME/<next>; returns the version."""
    model_dir = source.model_dir
    staging = model_dir / f".ferry-publish-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        filename = "model.plan" if artifact.platform == TENSORRT_PLATFORM else "model.onnx"
        shutil.copyfile(artifact.path, staging / filename)
        for sidecar in (EXPORT_REPORT_FILENAME, REFERENCE_FILENAME):
            if (source.onnx_path.parent / sidecar).is_file():
                shutil.copyfile(source.onnx_path.parent / sidecar, staging / sidecar)
        current = read_config(model_dir)
        while True:
            version = next_version(model_dir)
            config = final_config(source, artifact, version)
            report["published"] = {"variant": artifact.variant, "version": version}
            report["previous_config"] = format_config(current) if current is not None else None
            write_reports(report, staging)
            if config is not None and artifact.platform == TENSORRT_PLATFORM:
                _pin_served(model_dir, current or source.config)
            try:
                os.rename(staging, model_dir / str(version))
                break
            except OSError:
                if not (model_dir / str(version)).exists():
                    raise  # not a version race: give up
        if config is not None:
            write_config(model_dir, config)
        return version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pin_served(model_dir: Path, config: ModelConfig) -> None:
    """Pin the version policy to the served versions so a new folder is not picked up yet."""
    if config.version_policy.HasField("specific"):
        return
    pinned = ModelConfig()
    pinned.CopyFrom(config)
    served = served_versions(config, version_numbers(model_dir))
    pinned.version_policy.specific.versions.extend(served)
    write_config(model_dir, pinned)
