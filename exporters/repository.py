"""Write one repository entry atomically: REPO/NAME/config.pbtxt + REPO/NAME/<v>/model.onnx..."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from exporters.errors import ExportError
from exporters.specs import IOSpec
from server.repository_format import (
    CONFIG_TYPE_BY_DATATYPE,
    ONNX_PLATFORM,
    ModelConfig,
    ModelConfigError,
    is_valid_model_name,
    next_version,
    read_config,
    write_config,
)

STAGING_PREFIX = ".ferry-export-"


def check_model_name(name: str) -> None:
    """A plain folder name, as the server accepts."""
    if not is_valid_model_name(name):
        raise ExportError(
            f"--name '{name}' is not a valid model name (letters, digits, '_', '-', "
            "'.'; no path separators, not hidden)",
            stage="load",
        )


def resolve_version(model_dir: Path, requested: int | None, overwrite: bool) -> int:
    """The requested version, or the next free one; refuses an existing one without overwrite."""
    if requested is None:
        return next_version(model_dir)
    if requested < 1:
        raise ExportError(f"--version {requested}: versions start at 1", stage="load")
    if (model_dir / str(requested)).exists() and not overwrite:
        raise ExportError(
            f"{model_dir / str(requested)} already exists: pass --overwrite to "
            "replace it, or leave out --version to use the next free version",
            stage="load",
        )
    return requested


def build_config(
    name: str,
    inputs: Sequence[IOSpec],
    outputs: Sequence[IOSpec],
    max_batch_size: int,
    existing: ModelConfig | None = None,
) -> ModelConfig:
    """config.pbtxt for the export; serving settings of an existing config are kept."""
    config = ModelConfig()
    if existing is not None:
        config.CopyFrom(existing)
        del config.input[:]
        del config.output[:]
        config.ClearField("default_model_filename")
        config.ClearField("backend")
    config.name = name
    config.platform = ONNX_PLATFORM
    config.max_batch_size = max_batch_size
    for section, specs in ((config.input, inputs), (config.output, outputs)):
        for spec in specs:
            tensor = section.add()
            tensor.name = spec.name
            tensor.data_type = CONFIG_TYPE_BY_DATATYPE[spec.datatype]
            tensor.dims.extend(spec.config_dims)
    if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
        config.dynamic_batching.SetInParent()
    return config


def existing_config(model_dir: Path) -> ModelConfig | None:
    """The model's current config.pbtxt, or None; an unreadable one is an error."""
    try:
        return read_config(model_dir)
    except ModelConfigError as exc:
        raise ExportError(f"{model_dir}/config.pbtxt: {exc}", stage="write") from None


def publish(
    repository: Path,
    name: str,
    version: int,
    version_files: Path,
    config: ModelConfig,
    overwrite: bool,
) -> Path:
    """Move the finished version folder and config into the repository; all or nothing."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=repository))
    except OSError as exc:
        raise ExportError(f"cannot write to {repository}: {exc}", stage="write") from None
    try:
        staged_model = staging / name
        staged_version = staged_model / str(version)
        shutil.copytree(version_files, staged_version)
        model_dir = repository / name
        target = model_dir / str(version)
        if not model_dir.exists():
            write_config(staged_model, config)
            os.rename(staged_model, model_dir)
            return target
        if target.exists():
            if not overwrite:
                raise ExportError(
                    f"{target} already exists: pass --overwrite to replace it", stage="write"
                )
            os.rename(target, staging / "replaced")
        os.rename(staged_version, target)
        write_config(model_dir, config)
        return target
    except OSError as exc:
        raise ExportError(f"writing {repository / name} failed: {exc}", stage="write") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
