"""`digits`: a LeNet-style CNN on scikit-learn's 8x8 handwritten digits (10 classes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from torch import nn

from examples.common import ARTIFACTS_DIR, fit, predict, save_artifacts, split_indices

INPUT = "image"  # FP32 (1, 8, 8), pixel values 0..16 as the dataset has them
OUTPUT = "probabilities"  # FP32 (10,)


class DigitsCNN(nn.Module):
    """Conv-ReLU-Conv-ReLU-MaxPool, then a 2-layer head with Dropout; softmax probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.25), nn.Linear(64, 10)
        )

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Class scores before the softmax."""
        return self.head(self.features(image / 16.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=1)


class _Logits(nn.Module):
    def __init__(self, model: DigitsCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.logits(image)


def train(out_dir: Path = ARTIFACTS_DIR / "digits", seed: int = 0) -> dict[str, Any]:
    """Train, evaluate on the test split, write the artifacts; returns the metrics."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = load_digits()
    x = data.images.astype(np.float32)[:, None, :, :]
    labels = data.target.astype(np.int64)
    splits = split_indices(len(x), seed)
    model = DigitsCNN()
    fit(
        _Logits(model),
        nn.functional.cross_entropy,
        torch.from_numpy(x[splits[0]]),
        torch.from_numpy(labels[splits[0]]),
        epochs=12,
        batch_size=64,
        lr=3e-3,
        seed=seed,
    )
    metrics = {
        "val_accuracy": float(
            accuracy_score(labels[splits[1]], predict(model, x[splits[1]]).argmax(1))
        ),
        "test_accuracy": float(
            accuracy_score(labels[splits[2]], predict(model, x[splits[2]]).argmax(1))
        ),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return save_artifacts(out_dir, model, INPUT, x, labels, splits, metrics)
