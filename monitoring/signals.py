"""Drift signals: a small fixed set of per-row numbers computed from outputs and inputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitoring.signal_kinds import EXTRACTORS, plan_input, plan_output

MAX_SIGNALS = 32
MAX_OUTPUT_SIGNALS = 24
MAX_COUNTED_CLASSES = 50
TASKS = ("auto", "classification", "regression", "other")

FloatArray = NDArray[np.float64]


class SignalError(ValueError):
    """The model's tensors cannot be summarised into drift signals."""


@dataclass(frozen=True)
class SignalSpec:
    """How to turn a request's tensors into signal rows; fixed when the reference is built."""

    extractors: tuple[dict[str, Any], ...]
    names: tuple[str, ...]
    scopes: tuple[str, ...]
    arrays: dict[str, NDArray[np.float64]] = field(default_factory=dict)  # projection matrices
    class_output: str | None = None  # output whose argmax feeds ferry_prediction_class_total

    @property
    def tensors(self) -> tuple[tuple[str, str], ...]:
        """(scope, tensor name) pairs the signals read."""
        return tuple(dict.fromkeys((e["scope"], e["tensor"]) for e in self.extractors))

    def to_json(self) -> str:
        """Serialise everything but the arrays (stored beside it in reference.npz)."""
        return json.dumps({"extractors": list(self.extractors), "class_output": self.class_output})

    @classmethod
    def from_json(cls, text: str, arrays: Mapping[str, NDArray[np.float64]]) -> SignalSpec:
        """Inverse of `to_json`; names and scopes are recomputed from the extractors."""
        data = json.loads(text)
        extractors = tuple(dict(e) for e in data["extractors"])
        names = tuple(n for e in extractors for n in e["names"])
        scopes = tuple(e["scope"] for e in extractors for _ in e["names"])
        for e in extractors:
            if e["kind"] not in EXTRACTORS:
                raise SignalError(f"unknown signal kind {e['kind']!r}")
            if "matrix" in e and e["matrix"] not in arrays:
                raise SignalError(f"projection matrix {e['matrix']!r} is missing")
        return cls(
            extractors,
            names,
            scopes,
            {k: np.asarray(v, np.float64) for k, v in arrays.items()},
            data.get("class_output"),
        )


def build_spec(
    inputs: Mapping[str, tuple[str, tuple[int, ...]]],
    outputs: Mapping[str, tuple[str, tuple[int, ...]]],
    sample_outputs: Mapping[str, np.ndarray],
    task: str = "auto",
    max_signals: int = MAX_SIGNALS,
    seed: int = 0,
) -> SignalSpec:
    """Choose signals: outputs first (up to 24), then input summaries, at most `max_signals`."""
    if task not in TASKS:
        raise SignalError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    rng = np.random.default_rng(seed)
    extractors: list[dict[str, Any]] = []
    arrays: dict[str, FloatArray] = {}
    class_output: str | None = None
    budget = min(MAX_OUTPUT_SIGNALS, max_signals)
    for name, (kind, shape) in outputs.items():
        for plan in plan_output(
            name, kind, shape, sample_outputs.get(name), task, budget, rng, arrays
        ):
            extractors.append(plan)
            budget -= len(plan["names"])
            if class_output is None and 0 < plan.get("classes", 0) <= MAX_COUNTED_CLASSES:
                class_output = name
    budget = max_signals - sum(len(e["names"]) for e in extractors)
    for name, (kind, shape) in inputs.items():
        for plan in plan_input(name, kind, shape, budget, rng, arrays):
            extractors.append(plan)
            budget -= len(plan["names"])
    if not extractors:
        raise SignalError("no numeric input or output to monitor")
    names = tuple(n for e in extractors for n in e["names"])
    scopes = tuple(e["scope"] for e in extractors for _ in e["names"])
    return SignalSpec(tuple(extractors), names, scopes, arrays, class_output)


def compute_signals(
    spec: SignalSpec,
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
) -> FloatArray:
    """Signal rows (rows x signals, float64) for tensors that carry a leading row dimension."""
    blocks = []
    for e in spec.extractors:
        source = outputs if e["scope"] == "outputs" else inputs
        if e["tensor"] not in source:
            raise SignalError(f"tensor {e['tensor']!r} is missing")
        tensor = np.asarray(source[e["tensor"]])
        matrix = spec.arrays.get(e.get("matrix", ""))
        blocks.append(EXTRACTORS[e["kind"]](tensor.reshape(tensor.shape[0], -1), e, matrix))
    return np.concatenate(blocks, axis=1)


def predicted_classes(spec: SignalSpec, outputs: Mapping[str, np.ndarray]) -> NDArray[np.intp]:
    """Top-1 class per row of the classifier output (empty when the model is not a classifier)."""
    if spec.class_output is None or spec.class_output not in outputs:
        return np.empty(0, dtype=np.intp)
    scores = np.asarray(outputs[spec.class_output])
    scores = scores.reshape(scores.shape[0], -1)
    finite = np.isfinite(scores).all(axis=1)
    return np.asarray(np.argmax(scores[finite], axis=1), dtype=np.intp)


def datatype_kind(datatype: str) -> str:
    """numpy kind character ('f', 'i', 'u', 'b', 'O') of a KServe datatype name."""
    if datatype.startswith("FP") or datatype == "BF16":
        return "f"
    if datatype.startswith("INT"):
        return "i"
    if datatype.startswith("UINT"):
        return "u"
    return "b" if datatype == "BOOL" else "O"
