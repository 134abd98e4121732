"""`diabetes`: an MLP regressor on scikit-learn's diabetes progression data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_squared_error, r2_score
from torch import nn

from examples.common import ARTIFACTS_DIR, Standardize, fit, predict, save_artifacts, split_indices

INPUT = "features"  # FP32 (10,), the dataset's (already scaled) features
OUTPUT = "prediction"  # FP32 (1,), disease progression one year later, in the target's units


class DiabetesMLP(nn.Module):
    """Standardize -> 10-16-1 MLP -> back to the target's units."""

    def __init__(self) -> None:
        super().__init__()
        self.standardize = Standardize(10)
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))

    def scaled(self, features: torch.Tensor) -> torch.Tensor:
        """The prediction in standardized target units (what training fits)."""
        return self.net(self.standardize(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scaled(features) * self.target_std + self.target_mean


class _Scaled(nn.Module):
    def __init__(self, model: DiabetesMLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.scaled(features)


def train(out_dir: Path = ARTIFACTS_DIR / "diabetes", seed: int = 0) -> dict[str, Any]:
    """Train, evaluate (RMSE, R²) on the test split, write the artifacts."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    data = load_diabetes()
    x = data.data.astype(np.float32)
    target = data.target.astype(np.float32)[:, None]
    splits = split_indices(len(x), seed)
    model = DiabetesMLP()
    model.standardize.fit(x[splits[0]])
    model.target_mean.fill_(float(target[splits[0]].mean()))
    model.target_std.fill_(float(target[splits[0]].std()))
    scaled = (target - model.target_mean.numpy()) / model.target_std.numpy()
    fit(
        _Scaled(model),
        nn.functional.mse_loss,
        torch.from_numpy(x[splits[0]]),
        torch.from_numpy(scaled[splits[0]].astype(np.float32)),
        epochs=60,
        batch_size=32,
        lr=3e-3,
        weight_decay=1e-2,
        seed=seed,
    )
    metrics: dict[str, Any] = {}
    for split, rows in (("val", splits[1]), ("test", splits[2])):
        prediction = predict(model, x[rows])
        metrics[f"{split}_rmse"] = float(np.sqrt(mean_squared_error(target[rows], prediction)))
        metrics[f"{split}_r2"] = float(r2_score(target[rows], prediction))
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    return save_artifacts(out_dir, model, INPUT, x, target, splits, metrics)
