"""The kinds of drift signal: how each is planned from a tensor spec and computed from rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Extractor = Callable[[np.ndarray, dict[str, Any], FloatArray | None], FloatArray]

MAX_PER_CLASS = 20  # per-class probabilities up to this many classes, else max-prob/entropy/margin
MAX_NAMED_FEATURES = 30
PROJECTIONS = 8
_NOT_CLASS_HINTS = ("embed", "hidden", "feature", "encod", "latent", "pool")


def _softmax(x: FloatArray) -> FloatArray:
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def _probs(x: np.ndarray, e: dict[str, Any], _: FloatArray | None) -> FloatArray:
    values = x.astype(np.float64)
    return _softmax(values) if e.get("softmax") else values


def _confidence(x: np.ndarray, e: dict[str, Any], m: FloatArray | None) -> FloatArray:
    p = np.clip(_probs(x, e, m), 0.0, 1.0)
    top2 = np.sort(p, axis=1)[:, -2:]
    entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)
    return np.stack([top2[:, 1], entropy, top2[:, 1] - top2[:, 0]], axis=1)


def _values(x: np.ndarray, e: dict[str, Any], _: FloatArray | None) -> FloatArray:
    return np.asarray(x[:, : len(e["names"])], dtype=np.float64)


def _projection(x: np.ndarray, e: dict[str, Any], matrix: FloatArray | None) -> FloatArray:
    assert matrix is not None
    return np.asarray(x.astype(np.float64) @ matrix, dtype=np.float64)


def _moments(x: np.ndarray, e: dict[str, Any], _: FloatArray | None) -> FloatArray:
    values = x.astype(np.float64)
    return np.stack([values.mean(axis=1), values.std(axis=1)], axis=1)


def _channels(x: np.ndarray, e: dict[str, Any], _: FloatArray | None) -> FloatArray:
    c = int(e["channels"])
    values = x.astype(np.float64)
    per = (
        values.reshape(x.shape[0], -1, c)
        if e["channel_last"]
        else values.reshape(x.shape[0], c, -1).transpose(0, 2, 1)
    )
    return np.concatenate([per.mean(axis=1), per.std(axis=1)], axis=1)


EXTRACTORS: dict[str, Extractor] = {
    "probs": _probs,
    "confidence": _confidence,
    "values": _values,
    "projection": _projection,
    "moments": _moments,
    "channels": _channels,
}


def _static_size(shape: tuple[int, ...]) -> int | None:
    return math.prod(shape) if all(d > 0 for d in shape) else None


def _project(
    name: str,
    scope: str,
    size: int,
    k: int,
    rng: np.random.Generator,
    arrays: dict[str, FloatArray],
) -> dict[str, Any]:
    key = f"projection_{len(arrays)}"
    arrays[key] = rng.standard_normal((size, k)) / math.sqrt(size)
    return {
        "kind": "projection",
        "tensor": name,
        "scope": scope,
        "matrix": key,
        "names": [f"{name}.rp{i}" for i in range(k)],
    }


def _is_probability(sample: np.ndarray | None) -> bool:
    if sample is None or sample.size == 0:
        return False
    rows = sample.reshape(sample.shape[0], -1).astype(np.float64)
    return bool(np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def plan_output(
    name: str,
    kind: str,
    shape: tuple[int, ...],
    sample: np.ndarray | None,
    task: str,
    budget: int,
    rng: np.random.Generator,
    arrays: dict[str, FloatArray],
) -> list[dict[str, Any]]:
    """Signals for one output (row shape `shape`, numpy kind char): class probs, value, ..."""
    size = _static_size(shape)
    if kind not in "fiub" or budget < 1:
        return []
    base = {"tensor": name, "scope": "outputs"}
    if size is None:
        return [{"kind": "moments", **base, "names": [f"{name}.mean", f"{name}.std"]}][:budget]
    is_class = task == "classification" or (
        task == "auto"
        and kind == "f"
        and size >= 2
        and not any(h in name.lower() for h in _NOT_CLASS_HINTS)
    )
    if is_class and size >= 2:
        plan = {**base, "softmax": not _is_probability(sample), "classes": size}
        if size <= min(MAX_PER_CLASS, budget):
            return [{"kind": "probs", **plan, "names": [f"{name}.p{c}" for c in range(size)]}]
        if budget >= 3:
            return [
                {
                    "kind": "confidence",
                    **plan,
                    "names": [f"{name}.max_prob", f"{name}.entropy", f"{name}.margin"],
                }
            ]
        return []
    if size <= min(PROJECTIONS, budget):
        names = [f"{name}.value"] if size == 1 else [f"{name}.v{i}" for i in range(size)]
        return [{"kind": "values", **base, "names": names}]
    return [_project(name, "outputs", size, min(PROJECTIONS, budget), rng, arrays)]


def plan_input(
    name: str,
    kind: str,
    shape: tuple[int, ...],
    budget: int,
    rng: np.random.Generator,
    arrays: dict[str, FloatArray],
) -> list[dict[str, Any]]:
    """Summaries of one input: channel mean/std for images, named features, or projections."""
    size = _static_size(shape)
    if kind not in "fiub" or budget < 2:
        return []
    base = {"tensor": name, "scope": "inputs"}
    moments = {"kind": "moments", **base, "names": [f"{name}.mean", f"{name}.std"]}
    if size is None:
        return [moments]
    is_image = len(shape) == 2 or (len(shape) == 3 and min(shape[0], shape[-1]) <= 4)
    if is_image:
        channel_last = len(shape) == 3 and shape[0] > 4
        channels = 1 if len(shape) == 2 else (shape[-1] if channel_last else shape[0])
        if 2 * channels > budget:
            return [moments]
        plans: list[dict[str, Any]] = [
            {
                "kind": "channels",
                **base,
                "channels": channels,
                "channel_last": channel_last,
                "names": [f"{name}.c{c}.{s}" for s in ("mean", "std") for c in range(channels)],
            }
        ]
        k = min(PROJECTIONS, budget - 2 * channels)
        return plans + ([_project(name, "inputs", size, k, rng, arrays)] if k > 0 else [])
    if size <= min(MAX_NAMED_FEATURES, budget):
        return [{"kind": "values", **base, "names": [f"{name}.x{i}" for i in range(size)]}]
    k = min(PROJECTIONS, budget - 2)
    return [moments] + ([_project(name, "inputs", size, k, rng, arrays)] if k > 0 else [])
