"""The model version to optimize and the labelled `.npz` data, validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.repository_format import (
    NUMPY_DTYPE_BY_DATATYPE,
    OPTIMIZE_REPORT_FILENAME,
    ModelConfig,
    ModelConfigError,
    TensorSpec,
    autocomplete_from_onnx,
    read_config,
    tensor_specs,
    version_numbers,
)

LABELS_KEY = "labels"
SOURCE_FILENAME = "model.onnx"


class OptimizeError(Exception):
    """Bad input or an impossible request: the CLI prints the message and exits non-zero."""


@dataclass(frozen=True)
class SourceModel:
    """The FP32 ONNX version every candidate is built from, with its (completed) config."""

    name: str
    model_dir: Path
    version: int
    onnx_path: Path
    config: ModelConfig

    @property
    def max_batch_size(self) -> int:
        """Largest batch the model serves (0: the model does not batch)."""
        return int(self.config.max_batch_size)


@dataclass(frozen=True)
class Dataset:
    """Model inputs (leading axis = samples) and, for evaluation data, the labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    count: int


def locate_source(repository: Path, name: str, version: int | None) -> SourceModel:
    """Find REPO/NAME/<version>/model.onnx; default: the newest version not made by optimize."""
    model_dir = Path(repository) / name
    if not Path(repository).is_dir():
        raise OptimizeError(f"model repository '{repository}' does not exist")
    versions = version_numbers(model_dir)
    if not versions:
        raise OptimizeError(f"model '{name}' has no version folders in '{repository}'")
    if version is None:
        fp32 = [
            v
            for v in versions
            if (model_dir / str(v) / SOURCE_FILENAME).is_file()
            and not (model_dir / str(v) / OPTIMIZE_REPORT_FILENAME).exists()
        ]
        if not fp32:
            raise OptimizeError(f"model '{name}' has no FP32 version holding {SOURCE_FILENAME}")
        version = fp32[-1]
    elif version not in versions:
        listed = ", ".join(str(v) for v in versions)
        raise OptimizeError(f"model '{name}' has no version {version} (versions: {listed})")
    onnx_path = model_dir / str(version) / SOURCE_FILENAME
    if not onnx_path.is_file():
        raise OptimizeError(f"version {version} of '{name}' holds no {SOURCE_FILENAME}")
    try:
        config = autocomplete_from_onnx(read_config(model_dir), onnx_path, name)
    except ModelConfigError as exc:
        raise OptimizeError(f"config of '{name}': {exc}") from exc
    return SourceModel(name, model_dir, version, onnx_path, config)


def load_dataset(
    path: Path, source: SourceModel, *, role: str, need_labels: bool, min_samples: int = 1
) -> Dataset:
    """Load an `.npz` (one array per model input, plus `labels`) and check it fits the model."""
    if not Path(path).is_file():
        raise OptimizeError(f"{role} data '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise OptimizeError(f"{role} data '{path}' is not a readable .npz: {exc}") from exc
    specs, _ = tensor_specs(source.config)
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise OptimizeError(
            f"{role} data '{path}' lacks input(s) {missing}; it holds "
            f"{sorted(arrays)} and the model takes {[s.name for s in specs]}"
        )
    inputs = {spec.name: _checked(arrays[spec.name], spec, source, role) for spec in specs}
    labels = arrays.get(LABELS_KEY)
    if need_labels and labels is None:
        raise OptimizeError(f"{role} data '{path}' has no '{LABELS_KEY}' array")
    counts = {name: len(array) for name, array in inputs.items()}
    if labels is not None and need_labels:
        counts[LABELS_KEY] = len(labels)
    if len(set(counts.values())) != 1:
        raise OptimizeError(f"{role} data arrays disagree on the number of samples: {counts}")
    count = next(iter(counts.values()))
    if count < min_samples:
        raise OptimizeError(f"{role} data has {count} samples; at least {min_samples} are needed")
    return Dataset(inputs, labels if need_labels else None, count)


def _checked(array: np.ndarray, spec: TensorSpec, source: SourceModel, role: str) -> np.ndarray:
    """The array when its dtype and per-sample shape fit the input spec; OptimizeError if not."""
    expected = NUMPY_DTYPE_BY_DATATYPE.get(spec.datatype)
    if expected is None or array.dtype != expected:
        raise OptimizeError(
            f"{role} input '{spec.name}' is {array.dtype}; the model takes "
            f"{spec.datatype} ({expected})"
        )
    sample_shape = spec.shape[1:] if source.max_batch_size > 0 else spec.shape
    if array.ndim != len(sample_shape) + 1 or any(
        want not in (-1, got) for want, got in zip(sample_shape, array.shape[1:], strict=True)
    ):
        wanted = ", ".join(["N", *[str(d) if d >= 0 else "?" for d in sample_shape]])
        raise OptimizeError(
            f"{role} input '{spec.name}' has shape {tuple(array.shape)}; the model takes ({wanted})"
        )
    return array
