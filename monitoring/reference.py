"""Build and read `reference.npz`: signal samples of reference data and calibrated thresholds."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitoring.ks import calibrate_signal_alpha, ks_threshold
from monitoring.signals import SignalSpec, build_spec, compute_signals
from monitoring.tensors import ModelTensors, ReferenceDataError, read_model_tensors, run_model

REFERENCE_FILENAME = "reference.npz"
FORMAT_VERSION = 1
MIN_ROWS = 20


@dataclass(frozen=True)
class Reference:
    """A loaded drift reference: the spec, per-signal samples (sorted) and thresholds."""

    spec: SignalSpec
    samples: NDArray[np.float64]  # rows x signals, rows as drawn (joint)
    sorted_samples: NDArray[np.float64]  # the same, each column sorted
    window: int
    alpha: float
    alpha_signal: float
    thresholds: NDArray[np.float64]
    created: str = ""

    @property
    def rows(self) -> int:
        """Reference sample size."""
        return int(self.sorted_samples.shape[0])


def write_reference(
    version_dir: Path,
    model_path: Path,
    data: Mapping[str, np.ndarray],
    window: int = 1000,
    alpha: float = 0.05,
    *,
    task: str = "auto",
    max_rows: int = 10_000,
    seed: int = 0,
    simulations: int = 400,
) -> Path:
    """Run the ONNX model on `data` and write version_dir/reference.npz; returns its path."""
    if window < 2 or not 0.0 < alpha < 1.0:
        raise ReferenceDataError(f"need window >= 2 and 0 < alpha < 1 (got {window}, {alpha})")
    tensors = read_model_tensors(Path(model_path))
    inputs = tensors.validate(data, min_rows=MIN_ROWS)
    rows = next(iter(inputs.values())).shape[0]
    if rows > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
        inputs = {k: v[keep] for k, v in inputs.items()}
    outputs = run_model(Path(model_path), tensors, inputs)
    spec = build_spec(tensors.input_kinds(), _row_specs(outputs), outputs, task=task, seed=seed)
    samples = compute_signals(spec, inputs, outputs)
    samples = samples[np.isfinite(samples).all(axis=1)]
    if samples.shape[0] < MIN_ROWS:
        raise ReferenceDataError(
            f"only {samples.shape[0]} reference rows give finite signals (need {MIN_ROWS})"
        )
    alpha_signal = calibrate_signal_alpha(samples, window, alpha, simulations, seed)
    thresholds = np.full(len(spec.names), ks_threshold(alpha_signal, window, samples.shape[0]))
    meta = {
        "format": FORMAT_VERSION,
        "window": window,
        "alpha": alpha,
        "alpha_signal": alpha_signal,
        "bonferroni_alpha": alpha / len(spec.names),
        "rows": int(samples.shape[0]),
        "task": task,
        "model": Path(model_path).name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    payload: dict[str, Any] = {
        "samples": samples.astype(np.float32),
        "signal_names": np.array(spec.names),
        "signal_scopes": np.array(spec.scopes),
        "thresholds": thresholds,
        "spec": np.array(spec.to_json()),
        "meta": np.array(json.dumps(meta)),
        **{f"array_{k}": v for k, v in spec.arrays.items()},
    }
    target = Path(version_dir) / REFERENCE_FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".reference-", suffix=".npz", dir=version_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _row_specs(outputs: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (array.dtype.kind, tuple(array.shape[1:])) for name, array in outputs.items()}


def load_reference(path: Path) -> Reference:
    """Read and check reference.npz; raises ReferenceDataError saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ReferenceDataError(f"{path} is not a readable .npz file: {exc}") from exc
    missing = {"samples", "signal_names", "thresholds", "spec", "meta"} - set(files)
    if missing:
        raise ReferenceDataError(f"{path} lacks {', '.join(sorted(missing))}")
    try:
        meta = json.loads(str(files["meta"]))
        arrays = {k.removeprefix("array_"): v for k, v in files.items() if k.startswith("array_")}
        spec = SignalSpec.from_json(str(files["spec"]), arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReferenceDataError(f"{path} has an unreadable signal spec: {exc}") from exc
    samples = np.asarray(files["samples"], dtype=np.float64)
    names = tuple(str(n) for n in files["signal_names"])
    thresholds = np.asarray(files["thresholds"], dtype=np.float64)
    if meta.get("format") != FORMAT_VERSION:
        raise ReferenceDataError(
            f"{path} has format {meta.get('format')}, expected {FORMAT_VERSION}"
        )
    if (
        names != spec.names
        or samples.ndim != 2
        or samples.shape[1] != len(names)
        or thresholds.shape != (len(names),)
    ):
        raise ReferenceDataError(f"{path}: samples, signal names, thresholds and spec disagree")
    if samples.shape[0] < MIN_ROWS or not np.isfinite(samples).all():
        raise ReferenceDataError(f"{path}: needs >= {MIN_ROWS} rows of finite signal samples")
    return Reference(
        spec,
        samples,
        np.sort(samples, axis=0),
        int(meta["window"]),
        float(meta["alpha"]),
        float(meta["alpha_signal"]),
        thresholds,
        str(meta.get("created", "")),
    )


def signal_tensors(path: Path) -> tuple[tuple[str, str], ...] | None:
    """The (scope, tensor name) pairs the signals of reference.npz read, from its spec alone
    (no samples loaded); None when the file is missing or unreadable (the evaluator says why)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            extractors = json.loads(str(npz["spec"]))["extractors"]
        return tuple(dict.fromkeys((str(e["scope"]), str(e["tensor"])) for e in extractors))
    except Exception:  # not there, not an npz, no spec: the evaluator loads and reports it
        return None


def thresholds_for(
    reference: Reference,
    window: int,
    alpha: float,
) -> tuple[float, NDArray[np.float64]]:
    """Per-signal alpha and D thresholds for the serving window/alpha (recalibrated on mismatch)."""
    if window == reference.window and alpha == reference.alpha:
        return reference.alpha_signal, reference.thresholds
    alpha_signal = calibrate_signal_alpha(reference.samples, window, alpha)
    size = len(reference.spec.names)
    return alpha_signal, np.full(size, ks_threshold(alpha_signal, window, reference.rows))


__all__ = [
    "ModelTensors",
    "Reference",
    "ReferenceDataError",
    "load_reference",
    "thresholds_for",
    "write_reference",
]
