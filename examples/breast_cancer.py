"""`breast_cancer`: an MLP binary classifier on scikit-learn's Wisconsin breast cancer data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn

from examples.common import ARTIFACTS_DIR, Standardize, fit, predict, save_artifacts, split_indices

INPUT = "features"  # FP32 (30,), raw measurements (the model standardizes them)
OUTPUT = "probabilities"  # FP32 (2,): P(malignant), P(benign) as the dataset's labels 0/1


class BreastCancerMLP(nn.Module):
    """Standardize -> 30-32-16-2 MLP -> softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.standardize = Standardize(30)
        self.net = nn.Sequential(
            nn.Linear(30, 32),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(32, 16),
            nn.ReLU(),
            nn.Linear(16, 2),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores before the softmax."""
        return self.net(self.standardize(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


class _Logits(nn.Module):
    def __init__(self, model: BreastCancerMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.logits(features)


def train(out_dir: Path = ARTIFACTS_DIR / "breast_cancer", seed: int = 0) -> dict[str, Any]:
    """Train, evaluate (accuracy, F1, AUC-ROC) on the test split, write the artifacts."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    labels = data.target.astype(np.int64)
    splits = split_indices(len(x), seed)
    model = BreastCancerMLP()
    model.standardize.fit(x[splits[0]])
    fit(
        _Logits(model),
        nn.functional.cross_entropy,
        torch.from_numpy(x[splits[0]]),
        torch.from_numpy(labels[splits[0]]),
        epochs=60,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        seed=seed,
    )
    metrics: dict[str, Any] = {}
    for split, rows in (("val", splits[1]), ("test", splits[2])):
        probabilities = predict(model, x[rows])
        metrics[f"{split}_accuracy"] = float(accuracy_score(labels[rows], probabilities.argmax(1)))
        metrics[f"{split}_f1"] = float(f1_score(labels[rows], probabilities.argmax(1)))
        metrics[f"{split}_auc"] = float(roc_auc_score(labels[rows], probabilities[:, 1]))
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return save_artifacts(out_dir, model, INPUT, x, labels, splits, metrics)
