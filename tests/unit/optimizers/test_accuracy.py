"""The accuracy gate: metrics, task inference, misfit metrics, NaN/Inf and collapse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimizers.accuracy import gate, infer_task, metric_value
from optimizers.source import OptimizeError
from tests.support.onnx_models import run_reference
from tests.unit.optimizers.models import perturbed, write_example

LOGITS = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 0.1], [0.2, 0.1, 4.0], [1.0, 0.0, 2.0]])
LABELS = np.array([0, 1, 2, 0])


def test_classification_metrics() -> None:
    task = infer_task(LABELS, LOGITS, "out", None)
    assert (task.kind, task.metric) == ("classification", "accuracy")
    assert metric_value(task, LOGITS, LABELS) == pytest.approx(0.75)
    f1 = infer_task(LABELS, LOGITS, "out", "f1")
    assert 0 < metric_value(f1, LOGITS, LABELS) < 1
    assert metric_value(infer_task(LABELS, LOGITS, "out", "auc"), LOGITS, LABELS) > 0.5


def test_binary_single_column_scores() -> None:
    scores = np.array([[0.9], [0.2], [0.7], [0.1]])
    labels = np.array([1, 0, 1, 0])
    for metric in ("accuracy", "precision", "recall", "f1", "auc"):
        assert metric_value(infer_task(labels, scores, "p", metric), scores, labels) == 1.0


def test_regression_metrics() -> None:
    labels = np.array([1.5, 2.5, 3.5, 4.0])
    prediction = labels[:, None] + 0.5
    task = infer_task(labels, prediction, "y", None)
    assert (task.kind, task.metric) == ("regression", "r2")
    values = {
        m: metric_value(infer_task(labels, prediction, "y", m), prediction, labels)
        for m in ("mae", "mse", "rmse")
    }
    assert values == pytest.approx({"mae": 0.5, "mse": 0.25, "rmse": 0.5})


@pytest.mark.parametrize(
    ("labels", "prediction", "metric", "message"),
    [
        (np.array([1.3, 2.7]), np.array([[1.0], [2.0]]), "auc", "needs a classifier"),
        (LABELS, LOGITS, "mae", "has 3 columns"),
        (LABELS, LOGITS, "bleu", "unknown metric"),
        (np.array([0, 5]), LOGITS[:2], "accuracy", "does not fit the 3 classes"),
    ],
)
def test_misfit_metric(
    labels: np.ndarray, prediction: np.ndarray, metric: str, message: str
) -> None:
    with pytest.raises(OptimizeError, match=message):
        infer_task(labels, prediction, "out", metric)


def test_lower_is_better_metrics_drop_upwards() -> None:
    labels = np.array([1.0, 2.0, 3.0])
    reference = {"y": labels[:, None]}
    worse = {"y": labels[:, None] + 1.0}
    task = infer_task(labels, reference["y"], "y", "mae")
    result = gate(task, reference, 0.0, worse, labels, max_drop=0.5)
    assert not result.passed and result.delta == pytest.approx(1.0)
    assert "exceeds --max-drop 0.5" in result.reason


def test_nan_fails_the_gate() -> None:
    task = infer_task(LABELS, LOGITS, "out", None)
    broken = LOGITS.copy()
    broken[1, 1] = np.nan
    result = gate(task, {"out": LOGITS}, 0.75, {"out": broken}, LABELS, max_drop=1.0)
    assert not result.passed and result.reason.startswith("NaN/Inf")


def test_gate_rejects_a_perturbed_model(tmp_path: Path) -> None:
    example = write_example(tmp_path)
    data = np.load(example.eval_data)
    fp32_path = example.model_dir / "1" / "model.onnx"
    reference = run_reference(fp32_path, {"input": data["input"]})
    noisy = run_reference(perturbed(fp32_path, tmp_path / "noisy.onnx"), {"input": data["input"]})
    task = infer_task(data["labels"], reference["output"], "output", None)
    value = metric_value(task, reference["output"], data["labels"])
    result = gate(task, reference, value, noisy, data["labels"], max_drop=0.01)
    assert value == 1.0 and not result.passed
    assert result.top1_agreement is not None and result.top1_agreement < 0.7
    assert result.reason.startswith("accuracy drop: accuracy")
    same = gate(task, reference, value, reference, data["labels"], max_drop=0.0)
    assert same.passed and same.top1_agreement == 1.0 and same.max_abs_diff == 0.0
