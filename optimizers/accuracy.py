"""Accuracy gate: a task metric (scikit-learn) against the FP32 reference on the same data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from optimizers.source import OptimizeError

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "auc")
REGRESSION_METRICS = ("mae", "mse", "rmse", "r2")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse"})


@dataclass(frozen=True)
class Task:
    """What the prediction output means and how it is scored."""

    kind: str  # "classification" | "regression"
    metric: str
    output: str


@dataclass(frozen=True)
class GateResult:
    """One candidate's verdict against the FP32 reference."""

    value: float
    delta: float
    passed: bool
    reason: str
    top1_agreement: float | None
    max_abs_diff: float


def infer_task(labels: np.ndarray, prediction: np.ndarray, output: str, metric: str | None) -> Task:
    """Classification or regression from labels and the FP32 output; reject misfit metrics."""
    columns = 1 if prediction.ndim == 1 else int(np.prod(prediction.shape[1:]))
    integral = labels.dtype.kind in "biu" or bool(np.all(np.mod(labels, 1) == 0))
    binary_labels = bool(np.isin(labels, (0, 1)).all())
    looks_classifier = integral and (columns >= 2 or binary_labels)
    if metric is None:
        metric = "accuracy" if looks_classifier else "r2"
    if metric not in METRICS:
        raise OptimizeError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    if metric in CLASSIFICATION_METRICS and not looks_classifier:
        raise OptimizeError(
            f"metric '{metric}' needs a classifier, but output '{output}' has {columns} column(s) "
            f"and the labels are {'continuous' if not integral else 'not 0/1'}: "
            f"use one of {', '.join(REGRESSION_METRICS)}"
        )
    if metric in REGRESSION_METRICS and columns != 1:
        raise OptimizeError(
            f"metric '{metric}' needs one regression value per sample, but output '{output}' "
            f"has {columns} columns (a classifier): use one of {', '.join(CLASSIFICATION_METRICS)}"
        )
    if (
        metric in CLASSIFICATION_METRICS
        and columns >= 2
        and labels.size
        and (labels.min() < 0 or labels.max() >= columns)
    ):
        raise OptimizeError(
            f"labels range {labels.min()}..{labels.max()} does not fit the "
            f"{columns} classes of output '{output}'"
        )
    kind = "classification" if metric in CLASSIFICATION_METRICS else "regression"
    return Task(kind, metric, output)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) from logits or probabilities; one column means P(class 1)."""
    flat = scores.reshape(len(scores), -1).astype(np.float64)
    if flat.shape[1] == 1:
        column = flat[:, 0]
        p1 = column if column.min() >= 0 and column.max() <= 1 else 1 / (1 + np.exp(-column))
        return np.stack([1 - p1, p1], axis=1)
    if flat.min() >= 0 and np.allclose(flat.sum(axis=1), 1, atol=1e-3):
        return flat
    shifted: np.ndarray = np.exp(flat - flat.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def metric_value(task: Task, prediction: np.ndarray, labels: np.ndarray) -> float:
    """The task metric of one model's prediction output."""
    from sklearn import metrics as sk

    if task.kind == "regression":
        y_pred = prediction.reshape(len(prediction)).astype(np.float64)
        y_true = labels.reshape(len(labels)).astype(np.float64)
        regression = {
            "mae": sk.mean_absolute_error,
            "mse": sk.mean_squared_error,
            "r2": sk.r2_score,
        }
        if task.metric == "rmse":
            return float(np.sqrt(sk.mean_squared_error(y_true, y_pred)))
        return float(regression[task.metric](y_true, y_pred))
    probs = probabilities(prediction)
    y_true = labels.reshape(len(labels)).astype(np.int64)
    y_pred = probs.argmax(axis=1)
    average = "binary" if probs.shape[1] == 2 else "macro"
    try:
        if task.metric == "auc":
            if probs.shape[1] == 2:
                return float(sk.roc_auc_score(y_true, probs[:, 1]))
            return float(
                sk.roc_auc_score(
                    y_true, probs, multi_class="ovr", labels=list(range(probs.shape[1]))
                )
            )
    except ValueError as exc:
        raise OptimizeError(f"AUC cannot be computed on these labels: {exc}") from exc
    if task.metric == "accuracy":
        return float(sk.accuracy_score(y_true, y_pred))
    scorer = {"precision": sk.precision_score, "recall": sk.recall_score, "f1": sk.f1_score}
    return float(scorer[task.metric](y_true, y_pred, average=average, zero_division=0))


def metric_drop(metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference` (positive = worse), absolute."""
    return value - reference if metric in LOWER_IS_BETTER else reference - value


def gate(
    task: Task,
    reference: Mapping[str, np.ndarray],
    reference_value: float,
    candidate: Mapping[str, np.ndarray],
    labels: np.ndarray,
    max_drop: float,
) -> GateResult:
    """Score a candidate, check it for NaN/Inf and compare it with the FP32 reference."""
    nonfinite = {
        name: int(np.size(v) - np.isfinite(v).sum())
        for name, v in candidate.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating)
    }
    diffs = [
        float(np.max(np.abs(candidate[n].astype(np.float64) - reference[n])))
        for n in reference
        if np.size(reference[n]) and n in candidate
    ]
    max_abs_diff = max(diffs, default=0.0)
    prediction = candidate[task.output]
    agreement = None
    if task.kind == "classification":
        agreement = float(
            np.mean(
                probabilities(np.nan_to_num(prediction)).argmax(axis=1)
                == probabilities(reference[task.output]).argmax(axis=1)
            )
        )
    bad = {name: count for name, count in nonfinite.items() if count}
    if bad:
        return GateResult(
            float("nan"),
            float("nan"),
            False,
            f"NaN/Inf: non-finite values in outputs {bad}",
            agreement,
            float("nan"),
        )
    value = metric_value(task, prediction, labels)
    delta = metric_drop(task.metric, reference_value, value)
    if delta > max_drop + 1e-12:
        reason = (
            f"accuracy drop: {task.metric} {value:.4f} vs FP32 {reference_value:.4f}: "
            f"drop {delta:.4f} exceeds --max-drop {max_drop:g}"
        )
        return GateResult(value, delta, False, reason, agreement, max_abs_diff)
    return GateResult(value, delta, True, "", agreement, max_abs_diff)
